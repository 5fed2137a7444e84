#!/bin/bash
# Interleaved quick-profile runs: 2822567 (before the ninth session) in /tmp/pre9 and HEAD in /work/main.
#   ab.sh pre  ab    the old tree first in each pair: ab-{pre,head}-{1,2,3}.json, ab.log from stdout
#   ab.sh head ab2   the new tree first: ab2-*.json, ab2.log
first=$1 prefix=$2
trees="/tmp/pre9 /work/main"; [ "$first" = head ] && trees="/work/main /tmp/pre9"
out=/work/main/bench/results/s9-hotpath
for i in 1 2 3; do
  for tree in $trees; do
    name=$( [ $tree = /tmp/pre9 ] && echo pre || echo head )
    echo "== $name run $i $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $tree && PYTHONPATH=$tree timeout 900 /work/main/.venv/bin/python -m bench --profile quick --repeat 3 --pin same --transports tcp --out $out/$prefix-$name-$i.json > $out/$prefix-$name-$i.txt 2>&1)
    grep -A8 "callrt ÷ baselines" $out/$prefix-$name-$i.txt | tail -3
  done
done
echo DONE $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)

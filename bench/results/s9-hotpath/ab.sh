#!/bin/bash
# Interleaved quick-profile runs: 2822567 (before this session) in /tmp/pre9 and HEAD in /work/main.
for i in 1 2 3; do
  for tree in /tmp/pre9 /work/main; do
    name=$( [ $tree = /tmp/pre9 ] && echo pre || echo head )
    echo "== $name run $i $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $tree && PYTHONPATH=$tree timeout 900 /work/main/.venv/bin/python -m bench --profile quick --repeat 3 --pin same --transports tcp --out bench/results/s9-hotpath/ab-$name-$i.json > bench/results/s9-hotpath/ab-$name-$i.txt 2>&1)
    grep -A8 "callrt ÷ baselines" bench/results/s9-hotpath/ab-$name-$i.txt | tail -3
  done
done
echo DONE $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)

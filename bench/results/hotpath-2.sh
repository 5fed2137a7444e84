#!/bin/bash
# Interleaved quick-profile runs: caa6af8 (before hardening; HEAD's bench/client.py) in /tmp/pre and HEAD in /work/main.
for i in 1 2 3; do
  for tree in /tmp/pre /work/main; do
    name=$( [ $tree = /tmp/pre ] && echo pre || echo head )
    echo "== $name run $i $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $tree && PYTHONPATH=$tree timeout 900 /work/main/.venv/bin/python -m bench --profile quick --repeat 3 --pin same --transports tcp --out /tmp/s8/hot-$name-$i.json > /tmp/s8/hot-$name-$i.txt 2>&1)
    grep -A8 "callrt ÷ baselines" /tmp/s8/hot-$name-$i.txt | tail -3
  done
done
echo DONE $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)

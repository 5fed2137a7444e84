#!/bin/bash
# Interleaved quick-profile runs for bench/README.md (issue 11, hot path): caa6af8 in /tmp/pre (with HEAD's bench/client.py), HEAD in /work/main.
# Interleaved quick-profile runs: caa6af8 (before hardening; HEAD's bench/client.py) and HEAD, same harness.
for i in 1 2; do
  for tree in /tmp/pre /work/main; do
    name=$( [ $tree = /tmp/pre ] && echo pre || echo head )
    echo "== $name run $i $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $tree && PYTHONPATH=$tree timeout 900 /work/main/.venv/bin/python -m bench --profile quick --repeat 3 --pin same --transports tcp --out /tmp/hot-$name-$i.json > /tmp/hot-$name-$i.txt 2>&1)
    grep -A8 "callrt ÷ baselines" /tmp/hot-$name-$i.txt | tail -3
  done
done
echo DONE $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)

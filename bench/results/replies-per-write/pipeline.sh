#!/bin/bash
# Interleaved A/B for replies_per_write: 6f28f78 (/tmp/before) against 2959b5a (/work/main).
for i in 1 2; do
  for tree in /tmp/before /work/main; do
    name=$( [ $tree = /tmp/before ] && echo before || echo after )
    for pin in none same; do
      echo "== $name quick pin=$pin run $i $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)"
      (cd $tree && PYTHONPATH=$tree timeout 900 /work/main/.venv/bin/python -m bench --profile quick --repeat 3 --pin $pin --transports tcp --out /tmp/s8/pipe-$name-$pin-$i.json > /tmp/s8/pipe-$name-$pin-$i.txt 2>&1)
      grep -A8 "callrt ÷ baselines" /tmp/s8/pipe-$name-$pin-$i.txt | tail -2 | head -1
    done
    echo "== $name otel pin=none run $i $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $tree && PYTHONPATH=$tree timeout 900 /work/main/.venv/bin/python -m bench --profile otel --repeat 3 --out /tmp/s8/pipe-$name-otel-$i.json > /tmp/s8/pipe-$name-otel-$i.txt 2>&1)
    grep -E "^\| (callrt-otel|grpc-otel) " /tmp/s8/pipe-$name-otel-$i.txt | grep "/s\|±" | head -2
  done
done
echo DONE $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)

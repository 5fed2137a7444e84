#!/bin/bash
# otel-callgrind.sh TREE SIDE MODE (SIDE client|server|aserver, MODE sdk|nosdk): instructions per call under callgrind,
# (Ir(640 + 3200 calls) - Ir(640 + 640 calls)) / 2560, each a fresh process (otel-callgrind-run.py); all threads counted.
tree=$1; side=$2; mode=$3
out=${CGOUT:-/tmp}/cg-$(basename $tree)-$side-$mode
for n in 640 3200; do
  (cd $tree && PYTHONHASHSEED=0 PYTHONPATH=$tree valgrind --tool=callgrind --callgrind-out-file=$out-$n.out /work/main/.venv/bin/python $(dirname $(readlink -f $0))/otel-callgrind-run.py $side $mode $n > /dev/null 2>$out-$n.log)
done
a=$(grep -m1 "^summary:" $out-640.out | awk '{print $2}'); b=$(grep -m1 "^summary:" $out-3200.out | awk '{print $2}')
echo "$(basename $tree) $side $mode: $(( (b - a) / 2560 )) instructions per call"

#!/bin/bash
p=9700
for hb in "1 1" "3 1"; do for dir in down up; do
  p=$((p+1)); set -- $hb
  timeout 60 ./run2.sh R3_${1}_${2}_plain_${dir} $p $1 $2 none plain $dir 1000000 13
done; done
for hb in "1 1"; do for dir in down up; do for kind in both c2s s2c; do
  p=$((p+1)); set -- $hb
  timeout 60 ./run2.sh R3B_${1}_${2}_plain_${dir}_${kind} $p $1 $2 none plain $dir 1000000 14 4 $kind
done; done; done
for dir in down up; do p=$((p+1)); timeout 60 ./run2.sh R3V_1_1_v1_${dir}_c2s $p 1 1 memory v1 $dir 1000000 14 4 c2s; done
echo done

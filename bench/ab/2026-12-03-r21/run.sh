# r21: 3 blocks per SM for tiled int4 (2-stage block ring), and the 2-stage ring at 2 blocks
D=bench/ab/2026-12-03-r21
AB_SPEC=$D/spec AB_BENCH=$D/bench REPS=3 AB_TESTS="quant_cuda@b3 engine_cuda@b3" bash scripts/gpu-ab.sh > $OUT/log.txt 2>&1
T=/tmp/peregrine-ab
for v in base b3; do
  echo "== $v" >> $OUT/kernels.txt
  (cd $T/$v && timeout 150 b/peregrine bench --random-weights llama-2-7b --kernels 2>&1 | grep "copy\|int4-g32-tiled.*n=1\|int4-g128 .*n=1" >> $OUT/kernels.txt)
done
grep -h -B2 -A8 "Assertion\|CUDA error\|error:" $T/b3.t_*.log | head -80 > $OUT/b3-fail.txt

# r22: int8's per-warp rings with 2 stages, at 2 blocks per SM (s2) and at 3 (i8b3); base = r21's b2 (the tree)
D=bench/ab/2026-12-03-r22
AB_SPEC=$D/spec AB_BENCH=$D/bench REPS=3 AB_TESTS="quant_cuda engine_cuda@s2" bash scripts/gpu-ab.sh > $OUT/log.txt 2>&1
grep -h -B2 -A8 "Assertion\|CUDA error\|error:" /tmp/peregrine-ab/*.t_*.log | head -60 > $OUT/fail.txt

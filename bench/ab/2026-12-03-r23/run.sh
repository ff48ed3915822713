# r23: blocks of 4 consumer warps instead of 8 (more, smaller blocks per SM; fewer warps per tile barrier)
D=bench/ab/2026-12-03-r23
AB_SPEC=$D/spec AB_BENCH=$D/bench REPS=2 AB_TESTS="quant_cuda@w4" bash scripts/gpu-ab.sh > $OUT/log.txt 2>&1

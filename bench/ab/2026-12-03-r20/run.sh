# r20: A/B of the mins mma, then the kernel micro-benchmarks of both trees and the suites' failures
D=bench/ab/2026-12-03-r20
AB_SPEC=$D/spec AB_BENCH=$D/bench REPS=3 AB_TESTS="quant_cuda engine_cuda" bash scripts/gpu-ab.sh > $OUT/log.txt 2>&1
T=/tmp/peregrine-ab
for v in base mm; do
  echo "== $v" >> $OUT/kernels.txt
  (cd $T/$v && timeout 150 b/peregrine bench --random-weights llama-2-7b --kernels >> $OUT/kernels.txt 2>&1)
done
grep -h -B2 -A8 "Assertion\|CUDA error\|error:" $T/mm.t_*.log | head -80 > $OUT/mm-fail.txt
# stall reasons of the int4 g32 decode kernel, both trees (eight decode launches each, eager)
for v in base mm; do
  timeout 200 ncu --clock-control none -k "regex:^gemv_q_kernel" --launch-skip 300 --launch-count 8 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section InstructionStats \
    --metrics "regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$" \
    $T/$v/b/peregrine bench --random-weights llama-2-7b --runs 1 --prompt-len 5 --new-tokens 4 --no-graphs \
    --quant int4 --group-size 32 > $T/ncu-$v.txt 2>&1
  echo "== $v rc=$?" >> $OUT/ncu.txt
  grep -E "gemv_q_kernel|Duration|Executed Instructions  |Issued Ipc|No Eligible|stalled_(long|short|wait|barrier|math|mio|lg|not_sel|selected|branch|dispatch|no_inst|tex|membar|sleep|drain|imc|misc)[a-z_]*_per_issue_active" $T/ncu-$v.txt | awk '$NF > 0.05 || /Duration|gemv|Instr|Ipc|Eligible/' >> $OUT/ncu.txt
done

#!/usr/bin/env bash
# Hardware-counter profile of the decode hot kernels with Nsight Compute (works
# on the Firecracker GPU machines; clocks left alone with --clock-control
# none). Builds peregrine (sm_90) and, on a random Llama-2-7B, profiles eight
# decode-step launches each of: the bf16 matrix-vector kernel, the quantized
# one (tensor cores) with int8 and with int4 g32 weights, and with
# PROFILE_ATTN=1 the decode attention kernel.
# Eager decode (--no-graphs) so every launch is a separate kernel; the prefill
# launches are skipped. Reports (text, one per kernel family) go to $OUT:
# speed of light, warp state (stall reasons), scheduler, occupancy, memory.
# Needs scripts/gpu-deps.sh's .deps/root carried to the GPU machine.
set -u
export PEREGRINE_CONFIGS=$PWD/configs LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu
B=build-gpu; S=$OUT/sum.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $S; date -u +%FT%TZ >> $S
make -j16 SM=90 BUILD=$B DEPS_ROOT=.deps/root WARN="-Wall -Wextra -Wno-unused-parameter" $B/peregrine > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
NCU=${NCU:-ncu}
# every stall reason, in cycles per issued instruction (the section lists only the top one)
STALLS="--metrics regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$"
SECTIONS="--section SpeedOfLight --section InstructionStats --section WarpStateStats --section SchedulerStats --section Occupancy --section MemoryWorkloadAnalysis --section LaunchStats"
prof() {   # name kernel-regex skip -- bench args
  local name=$1 k=$2 skip=$3; shift 4
  timeout 240 $NCU --clock-control none -k "regex:$k" --launch-skip "$skip" --launch-count 8 $SECTIONS $STALLS \
    $B/peregrine bench --random-weights llama-2-7b --runs 1 --prompt-len 5 --new-tokens 4 --no-graphs "$@" \
    > $OUT/ncu-$name.txt 2>&1
  echo "$name: rc=$? $(grep -c 'Duration' $OUT/ncu-$name.txt) kernels profiled" >> $S
}
# skips: past the warm-up run's 5-token prefill (4 matrix-vector launches per layer, n = 5),
# so the profiled launches are decode steps (n = 1); which layer they hit does not matter
[ "${PROFILE_BF16:-1}" = 1 ] && prof gemv-bf16 '^gemv_kernel' 300 --
prof gemv-int8 '^gemv_q_kernel' 300 -- --quant int8
prof gemv-int4 '^gemv_q_kernel' 300 -- --quant int4 --group-size 32
[ "${PROFILE_ATTN:-0}" = 1 ] && prof attn-decode '^attn_decode_kernel' 100 --
cat $S

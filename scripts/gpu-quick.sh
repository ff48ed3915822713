#!/usr/bin/env bash
# Quick GPU check (about 2 minutes on an H200): sm_90-only build, the four GPU
# test suites, and eight end-to-end benchmark lines; a summary in $OUT/sum.txt,
# full logs beside it. scripts/gpu-check.sh is the complete run (sm_80 + sm_90,
# kernel micro-benchmarks, ptxas and SASS reports). Needs the folders that
# scripts/gpu-deps.sh prepares (.deps/root, .deps/gpu), carried to the GPU
# machine; run from the repository root with OUT set to a writable folder.
set -u
export PEREGRINE_CONFIGS=$PWD/configs LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu; B=build-gpu; S=$OUT/sum.txt; G=.deps/gpu/smollm2-4l.gguf
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader > $S; date -u +%FT%TZ >> $S
t0=$(date +%s); make -j16 SM=90 BUILD=$B DEPS_ROOT=.deps/root WARN="-Wall -Wextra -Wno-unused-parameter" $B/peregrine $B/tests/test_kernels_cuda $B/tests/test_engine_cuda $B/tests/test_quant_cuda $B/tests/test_kv_cuda > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }; echo "build $(( $(date +%s)-t0 )) s" >> $S
PYTHONUNBUFFERED=1 python3 scripts/gen-hf-gpu-refs.py /tmp/hfrefs > $OUT/hf.log 2>&1; echo "hfrefs rc=$?" >> $S
for t in kernels_cuda quant_cuda kv_cuda engine_cuda; do PEREGRINE_HF_REFS=/tmp/hfrefs PEREGRINE_GPU_GGUF=$G timeout 150 $B/tests/test_$t --verbose=1 > $OUT/t_$t.log 2>&1; echo "$t rc=$? $(grep Synthesis $OUT/t_$t.log)" >> $S; done
# the int8-KV greedy comparisons' divergences and gaps, and every failed assertion, kept in the summary (the
# full logs may not all come back: the GPU machine returns at most 8 files)
grep -h "diverges at\|prompts 32/32" $OUT/t_kv_cuda.log >> $S
grep -h -A2 "Assertion Failed" $OUT/t_*.log | grep -v "^\[----\] *$\|^--$" >> $S
b() { echo "== bench $*" >> $OUT/bench.txt; timeout 60 $B/peregrine bench "$@" >> $OUT/bench.txt 2>&1; echo "bench $* : $(tail -1 $OUT/bench.txt)" >> $S; }
b --random-weights llama-2-7b --runs 3
b --random-weights llama-2-7b --runs 3 --quant int8
b --random-weights llama-2-7b --runs 3 --quant int4 --group-size 32
b --random-weights llama-3.1-8b --runs 3
b --random-weights llama-3.1-8b --runs 2 --ctx 8187 --kv-cache bf16
b --random-weights llama-3.1-8b --runs 2 --ctx 8187 --kv-cache int8
b --random-weights llama-2-7b --runs 3 --prompt-len 512 --new-tokens 16
b --model $G --runs 3
cat $S

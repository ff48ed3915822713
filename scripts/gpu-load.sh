#!/usr/bin/env bash
# Load time of a full-size model file from the page cache (issue: a 7B bf16
# model loads in <= 5 s): builds peregrine (sm_90), writes a random
# Llama-2-7B-shaped HF folder (scripts/gen-random-hf-model.py: 13.5 GB of bf16
# in 5 GB shards), reads it once so it is in the page cache, then runs
# `peregrine bench` on it three times (bf16) and once with --quant int8, and
# keeps the engine's own load line ("weights on the device in ... s") and the
# process wall time. Summary in $OUT/sum.txt. Needs scripts/gpu-deps.sh's
# .deps/root carried to the GPU machine; run from the repository root.
set -u
export PEREGRINE_CONFIGS=$PWD/configs LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu
B=build-gpu; S=$OUT/sum.txt; M=${LOAD_MODEL_DIR:-/tmp/llama-2-7b-random}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $S; date -u +%FT%TZ >> $S
free -g | head -2 >> $S
t0=$(date +%s); make -j16 SM=90 BUILD=$B DEPS_ROOT=.deps/root WARN="-Wall -Wextra -Wno-unused-parameter" $B/peregrine > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }; echo "build $(( $(date +%s)-t0 )) s" >> $S
python3 scripts/gen-random-hf-model.py configs/tiny-llama.json /tmp/tiny-random --shard-gb 0.002 >> $S 2>&1
$B/peregrine bench --model /tmp/tiny-random --runs 1 --new-tokens 8 > $OUT/tiny.txt 2>&1; echo "tiny sharded folder: rc=$? $(tail -1 $OUT/tiny.txt)" >> $S
python3 scripts/gen-random-hf-model.py configs/llama-2-7b.json $M >> $S 2>&1
t0=$(date +%s%N); cat $M/*.safetensors > /dev/null; echo "cat (page cache warm-up): $(( ($(date +%s%N) - t0) / 1000000 )) ms" >> $S
run() {
  local t0=$(date +%s%N)
  $B/peregrine bench --model $M --runs 1 --prompt-len 5 --new-tokens 32 "$@" > $OUT/b.txt 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "bench $*: rc=$rc process wall $ms ms; $(grep -E 'weights on the device in' $OUT/b.txt | sed 's/.*info  //') | $(grep -E '^decode' $OUT/b.txt)" >> $S
  cat $OUT/b.txt >> $OUT/bench.txt
}
run; run; run; run --quant int8
cat $S

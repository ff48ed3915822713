#!/usr/bin/env bash
# Where a decode step's time goes, measured inside the real captured step:
# builds a copy of the tree with scripts/ablate-decode.patch (profiling only:
# PEREGRINE_ABLATE=<list> leaves the listed kernels out of the graph) and
# runs `peregrine bench` (random Llama-2-7B, batch 1, 5-token prompt, 200 new
# tokens) with each list left out. The cost of a kernel in context = step
# time with it - step time without it (its own time plus the hand-over to
# its neighbours under programmatic dependent launch, which a standalone
# micro-benchmark does not see). One line per (weights, list) in
# $OUT/ablate.txt: tok/s, ms per step, µs saved per step and per layer.
# Needs scripts/gpu-deps.sh's .deps/root carried to the GPU machine.
# ABLATE_QUANTS (default "bf16 int4") and ABLATE_LISTS choose the runs.
set -u
export PEREGRINE_CONFIGS=$PWD/configs LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu
D=/tmp/peregrine-ablate; rm -rf $D; mkdir -p $D
tar -cf - --exclude='./build*' --exclude=./.git . | tar -xf - -C $D
(cd $D && patch -p1 -s < scripts/ablate-decode.patch) || exit 1
make -C $D -j16 SM=90 BUILD=b DEPS_ROOT=.deps/root WARN=-Wall b/peregrine > $OUT/ablate-build.log 2>&1 || { tail -20 $OUT/ablate-build.log; exit 1; }
LISTS=${ABLATE_LISTS:-"none n1 n2 n1,n2 att wo qkv w13 w2 lm smp att,n1,n2,smp"}
for q in ${ABLATE_QUANTS:-bf16 int4}; do
  QA=""; [ $q = int8 ] && QA="--quant int8"; [ $q = int4 ] && QA="--quant int4 --group-size 32"
  base=""
  for a in $LISTS; do
    tok=$(PEREGRINE_ABLATE=$a timeout 90 $D/b/peregrine bench --random-weights llama-2-7b --runs 5 $QA 2>&1 | tail -1 | awk -F'|' '{print $10}')
    ms=$(awk -v t="$tok" 'BEGIN { printf "%.3f", 1000 / t }')
    [ "$a" = none ] && base=$ms
    awk -v q=$q -v a=$a -v t="$tok" -v ms=$ms -v b=$base 'BEGIN { d = (b - ms) * 1000;
      printf "%-5s leave out %-16s %7.1f tok/s %7.3f ms/step  saves %6.0f us/step %5.1f us/layer\n", q, a, t, ms, d, d / 32 }' | tee -a $OUT/ablate.txt
  done
done

#!/usr/bin/env bash
# GPU checks in one go (make test-gpu on a GPU machine): build, kernel tests
# against the CPU twins, HF transformers reference logits, CUDA-vs-CPU engine
# tests, graph == eager, kernel micro-benchmarks and `peregrine bench`.
#
#   scripts/gpu-check.sh prep     (on a machine with the default model and
#                                  python gguf) writes .deps/gpu/smollm2-4l.gguf:
#                                  the default model cut to its first 4 layers
#                                  (same Q8_0 embedding, Q4_1 matrices, tokenizer),
#                                  small enough to travel to a GPU machine that
#                                  cannot download the full 98 MB file.
#   scripts/gpu-check.sh [STAGES] on the GPU machine. STAGES (default all):
#                                  build tests kbench bench quant
#                                  (quant: weight-only int8/int4 tests, benches
#                                  and the 32K-context peak-memory comparison)
# Logs go to $OUT (or ./gpu-check-out); the summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prep ]; then
  src=${2:-$HOME/.cache/peregrine/SmolLM2-135M-Instruct.Q4_1.gguf}
  mkdir -p .deps/gpu
  python3 - "$src" .deps/gpu/smollm2-4l.gguf 4 <<'PY'
import struct, sys
src, dst, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
b = open(src, 'rb').read()
assert b[:4] == b'GGUF'
ver, = struct.unpack_from('<I', b, 4)
nt, nkv = struct.unpack_from('<QQ', b, 8)
off = 24
SZ = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
def rstr(o):
    n, = struct.unpack_from('<Q', b, o); return b[o + 8:o + 8 + n].decode(), o + 8 + n
def skipval(t, o):
    if t == 8: return rstr(o)[1]
    if t == 9:
        et, n = struct.unpack_from('<IQ', b, o); o += 12
        if et == 8:
            for _ in range(n): o = rstr(o)[1]
            return o
        return o + SZ[et] * n
    return o + SZ[t]
block_at = None
align = 32
for _ in range(nkv):
    k, o = rstr(off); t, = struct.unpack_from('<I', b, o); o += 4
    if k.endswith('.block_count'): block_at = o
    if k == 'general.alignment': align, = struct.unpack_from('<I', b, o)
    off = skipval(t, o)
kv_end = off
infos = []
for _ in range(nt):
    name, o = rstr(off); nd, = struct.unpack_from('<I', b, o); o += 4
    dims = struct.unpack_from('<%dQ' % nd, b, o); o += 8 * nd
    t, to = struct.unpack_from('<IQ', b, o); o += 12
    infos.append((name, dims, t, to)); off = o
data0 = (off + align - 1) // align * align
ends = sorted(i[3] for i in infos) + [len(b) - data0]
def size(to): return ends[ends.index(to) + 1] - to
kept = [i for i in infos if not (i[0].startswith('blk.') and int(i[0].split('.')[1]) >= keep)]
out = bytearray(b[:kv_end])
struct.pack_into('<Q', out, 8, len(kept))
struct.pack_into('<I', out, block_at, keep)
blobs, pos = [], 0
for name, dims, t, to in kept:
    nb = name.encode(); out += struct.pack('<Q', len(nb)) + nb + struct.pack('<I', len(dims))
    out += struct.pack('<%dQ' % len(dims), *dims) + struct.pack('<IQ', t, pos)
    blob = b[data0 + to:data0 + to + size(to)]
    blobs.append(blob); pos += (len(blob) + align - 1) // align * align
out += b'\0' * ((-len(out)) % align)
for blob in blobs: out += blob + b'\0' * ((-len(blob)) % align)
open(dst, 'wb').write(out)
print(f'{dst}: {len(kept)} of {nt} tensors, {keep} layers, {len(out) / 1e6:.1f} MB')
PY
  exit $?
fi

OUTD=${OUT:-gpu-check-out}
mkdir -p "$OUTD"
STAGES=${*:-build tests kbench bench quant}
has() { case " $STAGES " in *" $1 "*) return 0;; esac; return 1; }
SUMMARY="$OUTD/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
export PEREGRINE_CONFIGS=$PWD/configs

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a "$SUMMARY"
note "commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'uncommitted tree') $(git status --porcelain 2>/dev/null | head -1 | grep -q . && echo '(with local changes)')"
note "date: $(date -u +%Y-%m-%dT%H:%MZ)  gpu: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"

BIN=build/peregrine
if has build; then
  t0=$(date +%s)
  # host warnings are enforced by the CPU CI; here a warning must not stop the GPU checks
  DEPS=""; [ -d .deps/root ] && DEPS="DEPS_ROOT=.deps/root"   # unpacked -dev packages, if any
  make -j16 $DEPS WARN="-Wall -Wextra -Wno-unused-parameter" \
       build/peregrine build/tests/test_kernels_cuda build/tests/test_engine_cuda build/tests/test_quant_cuda \
       build/tests/test_kv_cuda > "$OUTD/build.log" 2>&1
  rc=$?
  note "build: rc=$rc in $(( $(date +%s) - t0 )) s"
  [ $rc -ne 0 ] && tail -30 "$OUTD/build.log"
  # resource usage of the hot kernels: registers, spills, local memory
  for f in gemv gemv_quant quant attention elementwise sample; do
    nvcc -std=c++17 -O3 -gencode arch=compute_90,code=sm_90 -I. -DPG_CUDA=1 -Xptxas -v -c kernels/cuda/$f.cu \
      -o /tmp/$f.o 2>&1 | c++filt >> "$OUTD/ptxas.txt"
  done
  cuobjdump --dump-sass /tmp/gemv.o > /tmp/sass_gemv.txt 2>&1
  cuobjdump --dump-sass /tmp/gemv_quant.o > /tmp/sass_gemv_quant.txt 2>&1
  note "sass gemv_quant (all instantiations): global loads by form: $(grep -oE 'LDG[.A-Z0-9_]*' /tmp/sass_gemv_quant.txt | sort | uniq -c | tr -s ' ' | tr '\n' ';'), local LDL/STL: $(grep -cE '\b(LDL|STL)\b' /tmp/sass_gemv_quant.txt), I2F/F2F conversions: $(grep -cE '\b(I2F|F2F)[.A-Z0-9]*' /tmp/sass_gemv_quant.txt), PRMT: $(grep -c 'PRMT' /tmp/sass_gemv_quant.txt), LOP3: $(grep -c 'LOP3' /tmp/sass_gemv_quant.txt)"
  note "ptxas: $(grep -c 'spill stores' "$OUTD/ptxas.txt") kernels, $(grep -v ' 0 bytes spill stores' "$OUTD/ptxas.txt" | grep -c 'spill stores') with spills"
  note "sass gemv (all instantiations): global loads by form: $(grep -oE 'LDG[.A-Z0-9_]*' /tmp/sass_gemv.txt | sort | uniq -c | tr -s ' ' | tr '\n' ';'), local LDL/STL: $(grep -cE '\b(LDL|STL)\b' /tmp/sass_gemv.txt)"
  cuobjdump --dump-sass /tmp/attention.o 2>/dev/null | grep -cE 'HMMA' | sed 's/^/sass attention: HMMA instructions /' | tee -a "$SUMMARY"
fi

LD="LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
if has tests; then
  env $LD build/tests/test_kernels_cuda --verbose=1 > /tmp/test_kernels_cuda.log 2>&1
  rc=$?; cat /tmp/test_kernels_cuda.log >> "$OUTD/tests.log"
  note "test_kernels_cuda: rc=$rc $(grep -E 'Synthesis' /tmp/test_kernels_cuda.log)"
  grep -E 'FAIL|rel err|Assertion' /tmp/test_kernels_cuda.log | head -40
  PYTHONUNBUFFERED=1 python3 scripts/gen-hf-gpu-refs.py /tmp/hfrefs >> "$OUTD/tests.log" 2>&1
  note "gen-hf-gpu-refs: rc=$?"; tail -5 "$OUTD/tests.log"
  GGUF=.deps/gpu/smollm2-4l.gguf
  [ -f "$HOME/.cache/peregrine/SmolLM2-135M-Instruct.Q4_1.gguf" ] && GGUF=$HOME/.cache/peregrine/SmolLM2-135M-Instruct.Q4_1.gguf
  env $LD PEREGRINE_HF_REFS=/tmp/hfrefs PEREGRINE_GPU_GGUF=$GGUF build/tests/test_engine_cuda --verbose=1 \
    > /tmp/test_engine_cuda.log 2>&1
  rc=$?; cat /tmp/test_engine_cuda.log >> "$OUTD/tests.log"
  note "test_engine_cuda ($GGUF): rc=$rc $(grep -E 'Synthesis' /tmp/test_engine_cuda.log)"
  grep -E 'hf_reference|gguf_greedy|diverges|FAIL|rel err|Assertion' /tmp/test_engine_cuda.log | head -40 | tee -a "$SUMMARY"
  # the KV cache: int8 kernels vs CPU twins, fused decode, int8 KV vs bf16 KV greedy tokens
  env $LD PEREGRINE_GPU_GGUF=$GGUF build/tests/test_kv_cuda --verbose=1 > /tmp/test_kv_cuda.log 2>&1
  rc=$?; cat /tmp/test_kv_cuda.log >> "$OUTD/tests.log"
  note "test_kv_cuda ($GGUF): rc=$rc $(grep -E 'Synthesis' /tmp/test_kv_cuda.log)"
  grep -E 'kv int8 greedy|engine_int8|FAIL|Assertion' /tmp/test_kv_cuda.log | head -20 | tee -a "$SUMMARY"
  # the same with programmatic dependent launch off (ordinary stream order)
  env $LD PEREGRINE_NO_PDL=1 PEREGRINE_HF_REFS=/tmp/hfrefs PEREGRINE_GPU_GGUF=$GGUF build/tests/test_engine_cuda \
    > /tmp/test_engine_cuda_nopdl.log 2>&1
  note "test_engine_cuda with PEREGRINE_NO_PDL=1: rc=$? $(grep -E 'Synthesis' /tmp/test_engine_cuda_nopdl.log)"
fi

if has kbench; then
  env $LD $BIN bench --random-weights llama-2-7b --kernels > "$OUTD/kbench-7b.txt" 2>&1
  note "kernel micro-benchmarks (llama-2-7b shape): rc=$?"; cat "$OUTD/kbench-7b.txt"
fi

if has bench; then
  b() { local name=$1; shift; echo "== peregrine bench $*" >> "$OUTD/bench.txt"
        env $LD $BIN bench "$@" > /tmp/b.tmp 2>&1; local rc=$?; cat /tmp/b.tmp >> "$OUTD/bench.txt"
        note "bench $name: rc=$rc $(grep '^| ' /tmp/b.tmp)"; }
  note "| model | engine | batch | prompt | ctx | new | prefill tok/s | TTFT ms | decode tok/s | GB/step | GB/s | MBU |"
  b 7b       --random-weights llama-2-7b --prompt-len 5 --new-tokens 200 --runs 5
  PEREGRINE_NO_PDL=1 b 7b-nopdl --random-weights llama-2-7b --prompt-len 5 --new-tokens 200 --runs 3
  b 7b-eager --random-weights llama-2-7b --prompt-len 5 --new-tokens 200 --runs 3 --no-graphs
  b 7b-p512  --random-weights llama-2-7b --prompt-len 512 --new-tokens 16 --runs 5
  b 8b       --random-weights llama-3.1-8b --prompt-len 5 --new-tokens 200 --runs 5
  b 7b-4k    --random-weights llama-2-7b --ctx 3891 --prompt-len 5 --new-tokens 200 --runs 3
  b 8b-8k    --random-weights llama-3.1-8b --ctx 8187 --prompt-len 5 --new-tokens 200 --runs 3
  b 7b-b4    --random-weights llama-2-7b --prompt-len 5 --new-tokens 100 --runs 3 --batch 4
  b smol-4l  --model .deps/gpu/smollm2-4l.gguf --prompt-len 5 --new-tokens 200 --runs 5
  b smol-4l-cpu --model .deps/gpu/smollm2-4l.gguf --device cpu --prompt-len 5 --new-tokens 64 --runs 3
fi

if has quant; then
  env $LD build/tests/test_quant_cuda --verbose=1 > /tmp/test_quant_cuda.log 2>&1
  rc=$?; cat /tmp/test_quant_cuda.log >> "$OUTD/tests.log"
  note "test_quant_cuda: rc=$rc $(grep -E 'Synthesis' /tmp/test_quant_cuda.log)"
  grep -E 'quant_vs_bf16|FAIL|Assertion' /tmp/test_quant_cuda.log | head -20 | tee -a "$SUMMARY"
  b() { local name=$1; shift; echo "== peregrine bench $*" >> "$OUTD/bench.txt"
        env $LD $BIN bench "$@" > /tmp/b.tmp 2>&1; local rc=$?; cat /tmp/b.tmp >> "$OUTD/bench.txt"
        note "bench $name: rc=$rc $(grep -E '^\| |device memory|weights on the device' /tmp/b.tmp | tr '\n' ' ')"; }
  note "| model | engine | batch | prompt | ctx | new | prefill tok/s | TTFT ms | decode tok/s | GB/step | GB/s | MBU |"
  for q in "int8" "int4 --group-size 32" "int4 --group-size 128"; do
    b "7b $q"      --random-weights llama-2-7b --quant $q --prompt-len 5 --new-tokens 200 --runs 5
    b "8b $q"      --random-weights llama-3.1-8b --quant $q --prompt-len 5 --new-tokens 200 --runs 5
  done
  b "7b bf16 p512"   --random-weights llama-2-7b --prompt-len 512 --new-tokens 16 --runs 5
  b "7b int8 p512"   --random-weights llama-2-7b --quant int8 --prompt-len 512 --new-tokens 16 --runs 5
  b "7b int4 p512"   --random-weights llama-2-7b --quant int4 --prompt-len 512 --new-tokens 16 --runs 5
  # peak memory at 32K context, Llama-3.1-8B shape: bf16 weights + bf16 KV vs int4 weights + int8 KV
  # (bf16 KV for the second if this build's CUDA engine has no int8 KV cache yet)
  b "8b 32k bf16+kv-bf16" --random-weights llama-3.1-8b --ctx 32563 --prompt-len 5 --new-tokens 200 --runs 1 --kv-cache bf16
  KV=int8
  env $LD $BIN bench --random-weights tiny-llama --device cuda --kv-cache int8 --prompt-len 5 --new-tokens 4 --runs 1 \
    > /dev/null 2>&1 || KV=bf16
  b "8b 32k int4+kv-$KV" --random-weights llama-3.1-8b --quant int4 --ctx 32563 --prompt-len 5 --new-tokens 200 --runs 1 --kv-cache $KV
fi
echo "================ summary"
cat "$SUMMARY"

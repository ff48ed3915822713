#!/usr/bin/env bash
# Server overhead: end-to-end decode tok/s of one streamed generation through
# HTTP (`peregrine serve`, measured by the client from SSE arrival times)
# against the engine alone (`peregrine bench`), same model, device, prompt
# length and number of new tokens, in the same run. Prints both and the ratio.
#
#   scripts/bench-serve.sh [--model default] [--device auto] [--prompt-len 16]
#                          [--new-tokens 128] [--runs 5] [--threads 0]
#                          [--max-seq-len 4096] [--rounds 3]
#                          [--random-weights PRESET --tokenizer FILE]
# (random weights: a GPU-sized model without its file; the server needs a
# tokenizer with the preset's vocabulary, e.g. tests/data/llama2-tokenizer.model)
#
# Engine and server are measured alternately for --rounds rounds (the
# server stays up, idle, while the engine runs): each round takes the
# engine's median of --runs timed runs after a warm-up, then the median of
# --runs streamed requests after a warm-up request. The ratio compares the
# medians over rounds, which cancels drift on a shared machine. Decode rate = (tokens - 1) / (time of last token - time of
# first token): the first token comes from prefill in both. Both get the same
# KV cache length (--max-seq-len; the CPU engine's speed depends on it) and
# the same --threads.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${PEREGRINE_BIN:-build/peregrine}
MODEL=default DEVICE=auto PROMPT=16 NEW=128 RUNS=5 THREADS=0 MAXSEQ=4096 ROUNDS=3 RANDW="" TOKENIZER=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --prompt-len) PROMPT=$2; shift 2 ;;
    --new-tokens) NEW=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --max-seq-len) MAXSEQ=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --random-weights) RANDW=$2; shift 2 ;;
    --tokenizer) TOKENIZER=$2; shift 2 ;;
    *) echo "bench-serve: unknown option $1" >&2; exit 2 ;;
  esac
done

WHAT=(--model "$MODEL")
[ -n "$RANDW" ] && WHAT=(--random-weights "$RANDW")
SERVE_EXTRA=()
[ -n "$TOKENIZER" ] && SERVE_EXTRA=(--tokenizer "$TOKENIZER")
engine() {
  out=$("$BIN" bench "${WHAT[@]}" --device "$DEVICE" --prompt-len "$PROMPT" --new-tokens "$NEW" --runs "$RUNS" \
        --threads "$THREADS" --max-seq-len "$MAXSEQ")
  echo "$out" | awk '/^decode/ { for (i = 1; i <= NF; i++) if ($i == "tok/s") { print $(i - 1); exit } }'
}

client=$(mktemp --suffix=.py)
log=$(mktemp)
cat >"$client" <<'PY'
# A deliberately thin client (raw socket, no per-event JSON parsing): on a
# small CPU machine the client shares the cores with the engine.
import json, random, re, socket, statistics, sys, time
port, prompt_len, new, runs = (int(x) for x in sys.argv[1:])
rng = random.Random(1234)
def one():
    ids = [rng.randrange(100, 30000) for _ in range(prompt_len)]  # inside any Llama vocabulary
    body = json.dumps({"prompt": ids, "max_tokens": new, "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    buf, first, last = b"", None, None
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        now = time.perf_counter()
        buf += b
        if b'"text":"' in b.replace(b'"text":""', b""):  # a chunk with text arrived
            first = first or now
            last = now
        if b"data: [DONE]" in buf[-64:]:
            break
    s.close()
    m = re.search(rb'"completion_tokens":(\d+)', buf)
    if not m:
        sys.exit("bench-serve: unexpected answer: " + buf[:500].decode(errors="replace"))
    tokens = int(m.group(1))
    # tokens that print nothing (an ignored EOS) send no text: count tokens
    # from usage, time from the first to the last text chunk
    return (tokens - 1) / (last - first), tokens
one()  # warm-up
rates = []
for _ in range(runs):
    rate, n = one()
    rates.append(rate)
print(f"{statistics.median(rates):.3f} {n}", flush=True)
PY

"$BIN" serve "${WHAT[@]}" "${SERVE_EXTRA[@]}" --device "$DEVICE" --threads "$THREADS" --max-seq-len "$MAXSEQ" --port 0 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log" "$client"' EXIT
port=""
for _ in $(seq 1 600); do
  port=$(sed -n 's/.*ready on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
  [ -n "$port" ] && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "bench-serve: server did not start"; cat "$log"; exit 1; }
grep -o 'on cpu ([^)]*)\|on NVIDIA[^,]*\|on [^,]*,' "$log" | head -1 | sed 's/^/device: /'
echo "engine: $BIN bench ${WHAT[*]} --device $DEVICE --prompt-len $PROMPT --new-tokens $NEW --runs $RUNS" \
     "--threads $THREADS --max-seq-len $MAXSEQ"
echo "server: $BIN serve ${WHAT[*]} ${SERVE_EXTRA[*]} --device $DEVICE --threads $THREADS --max-seq-len $MAXSEQ; $RUNS streamed" \
     "/v1/completions per round, prompt $PROMPT token ids, max_tokens $NEW, ignore_eos, temperature 0"
E=() S=()
for r in $(seq 1 "$ROUNDS"); do
  e=$(engine)
  read -r srate ntok <<<"$(${PYTHON:-python3} "$client" "$port" "$PROMPT" "$NEW" "$RUNS")"
  echo "round $r: engine $e tok/s, server $srate tok/s ($ntok tokens per request)"
  E+=("$e") S+=("$srate")
done
${PYTHON:-python3} -c "
import statistics, sys
n = len(sys.argv) // 2
e, s = statistics.median(map(float, sys.argv[1:1 + n])), statistics.median(map(float, sys.argv[1 + n:]))
print(f'engine decode {e:.2f} tok/s, server decode {s:.2f} tok/s (medians over {n} rounds)')
print(f'ratio server/engine {s / e:.4f} (overhead {100 * (1 - s / e):+.2f}%)')
" "${E[@]}" "${S[@]}"

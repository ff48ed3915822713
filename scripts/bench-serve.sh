#!/usr/bin/env bash
# Server overhead: end-to-end decode tok/s of one streamed generation through
# HTTP (`peregrine serve`, measured by the client from SSE arrival times)
# against the engine alone (`peregrine bench`), same model, device, prompt
# length and number of new tokens, in the same run. Prints both and the ratio.
#
#   scripts/bench-serve.sh [--model default] [--device auto] [--prompt-len 16]
#                          [--new-tokens 128] [--runs 5]
#
# The engine's figure is the median of --runs timed runs after a warm-up;
# the server's is the median over --runs streamed requests after a warm-up
# request. Decode rate = (tokens - 1) / (time of last token - time of first
# token): the first token comes from prefill in both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${PEREGRINE_BIN:-build/peregrine}
MODEL=default DEVICE=auto PROMPT=16 NEW=128 RUNS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --prompt-len) PROMPT=$2; shift 2 ;;
    --new-tokens) NEW=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "bench-serve: unknown option $1" >&2; exit 2 ;;
  esac
done

echo "== engine: $BIN bench --model $MODEL --device $DEVICE --prompt-len $PROMPT --new-tokens $NEW --runs $RUNS"
bench_out=$("$BIN" bench --model "$MODEL" --device "$DEVICE" --prompt-len "$PROMPT" --new-tokens "$NEW" --runs "$RUNS")
echo "$bench_out" | grep -E '^(device|decode)'
engine_rate=$(echo "$bench_out" | awk '/^decode/ { for (i = 1; i <= NF; i++) if ($i == "tok/s") { print $(i - 1); exit } }')

log=$(mktemp)
"$BIN" serve --model "$MODEL" --device "$DEVICE" --port 0 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
port=""
for _ in $(seq 1 600); do
  port=$(sed -n 's/.*ready on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
  [ -n "$port" ] && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "bench-serve: server did not start"; cat "$log"; exit 1; }

echo "== server: $RUNS streamed /v1/completions, prompt $PROMPT token ids, max_tokens $NEW, ignore_eos"
server_rate=$(${PYTHON:-python3} - "$port" "$PROMPT" "$NEW" "$RUNS" <<'PY'
import http.client, json, random, statistics, sys, time
port, prompt_len, new, runs = (int(x) for x in sys.argv[1:])
rng = random.Random(1234)
def one():
    ids = [rng.randrange(100, 40000) for _ in range(prompt_len)]
    body = json.dumps({"prompt": ids, "max_tokens": new, "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.status
    times, tokens = [], 0
    while True:
        line = r.fp.readline()
        if not line:
            break
        if line.startswith(b"data: {"):
            ev = json.loads(line[6:])
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
            elif ev["choices"] and ev["choices"][0]["text"]:
                times.append(time.perf_counter())
        if line.startswith(b"data: [DONE]"):
            break
    c.close()
    # tokens that print nothing (an ignored EOS) send no chunk: count tokens
    # from usage, time from the first to the last text chunk
    return (tokens - 1) / (times[-1] - times[0]), tokens
one()  # warm-up
rates = []
for _ in range(runs):
    rate, n = one()
    rates.append(rate)
print(f"{statistics.median(rates):.3f} {n}", flush=True)
PY
)
read -r srate nchunks <<<"$server_rate"
echo "engine decode   $engine_rate tok/s"
echo "server decode   $srate tok/s  ($nchunks tokens per request)"
${PYTHON:-python3} -c "import sys; e, s = float(sys.argv[1]), float(sys.argv[2]); print(f'ratio server/engine {s / e:.4f}  (overhead {100 * (1 - s / e):+.2f}%)')" "$engine_rate" "$srate"

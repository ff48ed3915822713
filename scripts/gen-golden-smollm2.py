#!/usr/bin/env python3
"""Golden greedy continuations of the default model, from HF transformers.

Loads ~/.cache/peregrine/SmolLM2-135M-Instruct.Q4_1.gguf (or $PEREGRINE_CACHE)
with AutoModelForCausalLM.from_pretrained(dir, gguf_file=...), which
dequantizes every tensor to float32 with the gguf package and un-permutes the
q/k projections for HF's rotate_half RoPE; runs greedy decoding
(do_sample=False, no EOS stop) for 32 tokens on fixed prompts, one of them
rendered with the model's chat template; writes prompt ids + generated ids to
tests/fixtures/golden/smollm2-greedy.json, with the top-1/top-2 logit gap of
every step so a test failure at a near-tie can be told from a real bug.

Usage: python3 scripts/gen-golden-smollm2.py   (needs torch, transformers,
accelerate, gguf; the model fetched by `make model`)
"""
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

N_NEW = 32
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

TEXT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    # long enough (> 64 tokens) to span several prefill chunks
    "Peregrine falcons are the fastest animals on the planet. When they dive to catch "
    "their prey, a manoeuvre called a stoop, they can reach speeds of more than three "
    "hundred kilometres per hour. They live on every continent except Antarctica, and "
    "they nest on cliffs, tall buildings and bridges. In the middle of the twentieth "
    "century their numbers fell sharply because of pesticides, but",
]
CHAT = [{"role": "user", "content": "What is the tallest mountain in the world?"}]


def check_dequant(model, path):
    """The embedding HF uses must equal gguf's own dequantization (exact)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    r = GGUFReader(path)
    t = next(t for t in r.tensors if t.name == "token_embd.weight")
    ref = dequantize(t.data, t.tensor_type).reshape(model.config.vocab_size, -1)
    got = model.model.embed_tokens.weight.detach().numpy()
    assert np.array_equal(ref.astype(np.float32), got), "token_embd dequantization differs"


def main():
    cache = os.environ.get("PEREGRINE_CACHE", os.path.expanduser("~/.cache/peregrine"))
    path = os.path.join(cache, FILE)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run `make model` first")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(cache, gguf_file=FILE)
    model = AutoModelForCausalLM.from_pretrained(cache, gguf_file=FILE, dtype=torch.float32)
    model.eval()
    check_dequant(model, path)

    prompts = []
    for text in TEXT_PROMPTS:
        prompts.append({"kind": "text", "text": text, "ids": tok(text).input_ids})
    chat_text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    chat_ids = tok.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=True)
    if isinstance(chat_ids, dict) or hasattr(chat_ids, "input_ids"):
        chat_ids = chat_ids["input_ids"]
    prompts.append({"kind": "chat", "messages": CHAT, "text": chat_text, "ids": list(chat_ids)})

    model.generation_config.eos_token_id = None   # run all N_NEW steps
    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=N_NEW, eos_token_id=None,
                               pad_token_id=tok.eos_token_id)
    with torch.no_grad():
        for p in prompts:
            x = torch.tensor([p["ids"]])
            out = model.generate(x, attention_mask=torch.ones_like(x), generation_config=gen_cfg)[0, x.shape[1]:].tolist()
            assert len(out) == N_NEW, (p["kind"], len(out), out)
            # top-1/top-2 gap of each greedy step (and an independent argmax check)
            seq, gaps = list(p["ids"]), []
            for t in range(N_NEW):
                lg = model(torch.tensor([seq])).logits[0, -1]
                top = torch.topk(lg, 2)
                gaps.append(round(float(top.values[0] - top.values[1]), 5))
                assert int(top.indices[0]) == out[t], (p["kind"], t)
                seq.append(out[t])
            p["generated"] = out
            p["generated_text"] = tok.decode(out)
            p["greedy_top2_gaps"] = gaps
            print(f"{p['kind']}: {len(p['ids'])} prompt ids, min gap {min(gaps):.4f}: "
                  f"{p['generated_text']!r}")

    import transformers
    doc = {
        "produced_by": "scripts/gen-golden-smollm2.py",
        "model_file": FILE,
        "loader": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=...): "
                  "weights dequantized to float32 by the gguf package, q/k un-permuted, "
                  "HF rotate_half RoPE; greedy, no EOS stop",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "n_new": N_NEW,
        "prompts": prompts,
    }
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = os.path.join(here, "..", "tests", "fixtures", "golden")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "smollm2-greedy.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write a full-size HF Llama folder with random bf16 weights (GPU machine).

For measuring what needs a real file of a large model — load time from the
page cache, sharded safetensors — without downloading one: config.json is a
configs/ preset copied as is, the weights are normal(0, 0.02) (norm weights
1 + N(0, 0.02)) drawn on the GPU with PyTorch, under the tensor names HF
transformers writes, in shards of about --shard-gb with
model.safetensors.index.json, as `save_pretrained` lays them out. No
tokenizer is written (`peregrine bench` needs none).

usage: gen-random-hf-model.py PRESET.json OUT_DIR [--shard-gb 5] [--seed 1]
"""
import argparse, json, os, shutil, time

import torch
from safetensors.torch import save_file


def tensor_shapes(c):
    h, inter, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    nh, nkv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    hd = c.get("head_dim", h // nh)
    v = c["vocab_size"]
    yield "model.embed_tokens.weight", (v, h)
    for i in range(L):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (nh * hd, h)
        yield p + "self_attn.k_proj.weight", (nkv * hd, h)
        yield p + "self_attn.v_proj.weight", (nkv * hd, h)
        yield p + "self_attn.o_proj.weight", (h, nh * hd)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "mlp.gate_proj.weight", (inter, h)
        yield p + "mlp.up_proj.weight", (inter, h)
        yield p + "mlp.down_proj.weight", (h, inter)
    yield "model.norm.weight", (h,)
    if not c.get("tie_word_embeddings", False):
        yield "lm_head.weight", (v, h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("preset")
    ap.add_argument("out")
    ap.add_argument("--shard-gb", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    with open(a.preset) as f:
        cfg = json.load(f)
    os.makedirs(a.out, exist_ok=True)
    shutil.copy(a.preset, os.path.join(a.out, "config.json"))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(a.seed)
    limit = int(a.shard_gb * 1e9)
    shards, cur, cur_bytes, total = [], {}, 0, 0
    t0 = time.time()

    def flush():
        nonlocal cur, cur_bytes
        if cur:
            shards.append(cur)
            cur, cur_bytes = {}, 0

    for name, shape in tensor_shapes(cfg):
        t = torch.randn(shape, generator=g, device=dev, dtype=torch.float32) * 0.02
        if name.endswith("norm.weight"):
            t += 1.0
        t = t.to(torch.bfloat16).cpu()
        n = t.numel() * 2
        if cur and cur_bytes + n > limit:
            flush()
        cur[name] = t
        cur_bytes += n
        total += n
    flush()
    index = {"metadata": {"total_size": total}, "weight_map": {}}
    for i, sd in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sd, os.path.join(a.out, fname), metadata={"format": "pt"})
        for k in sd:
            index["weight_map"][k] = fname
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=1)
    print(f"{a.out}: {total / 1e9:.2f} GB of bf16 weights in {len(shards)} shards, written in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()

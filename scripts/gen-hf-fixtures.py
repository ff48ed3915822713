#!/usr/bin/env python3
"""Build the small HF Llama fixtures under tests/fixtures/hf/ (committed).

Each fixture is a seeded random LlamaForCausalLM saved as config.json +
model.safetensors, plus what HF transformers computes from it in float32:
  logits.bin      little-endian f32: for each prompt in order, the logits of
                  every prompt position, [len][vocab]
  reference.json  prompts (ids), greedy continuations (32 ids each, from
                  model.generate(do_sample=False)), the top-1/top-2 logit gap
                  of every greedy step, and what produced them.

Fixtures:
  mha-f32        multi-head attention, untied lm_head, F32 storage
  gqa-bf16-tied  grouped-query attention, tied embeddings, BF16 storage
  llama3-f16     GQA + rope_scaling llama3 (factor 8, low 1, high 4, orig 64),
                 head_dim 32 so some frequencies are kept, some smoothed and
                 some divided by the factor; F16 storage

Stored weights are rounded to their storage dtype first and the reference is
computed in float32 from exactly those values, so our f32 engine and HF run
the same numbers. Weights are drawn with std 0.15 (norm weights 1 + 0.2 N)
so logits are spread out and greedy decoding has clear winners.

Usage: python3 scripts/gen-hf-fixtures.py [OUT_DIR]   (needs torch, transformers)
"""
import json
import os
import struct
import sys

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

N_NEW = 32

FIXTURES = [
    dict(name="mha-f32", dtype=torch.float32, seed=1234,
         cfg=dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                  vocab_size=256, max_position_embeddings=256, rope_theta=10000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=False)),
    dict(name="gqa-bf16-tied", dtype=torch.bfloat16, seed=5678,
         cfg=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  vocab_size=256, max_position_embeddings=256, rope_theta=10000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)),
    dict(name="llama3-f16", dtype=torch.float16, seed=91011,
         cfg=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                  vocab_size=256, max_position_embeddings=512, rope_theta=10000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=False,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0,
                                    original_max_position_embeddings=64))),
]

# Fixed prompts (token ids < 256): a short one, a longer one, one with repeats.
PROMPTS = [
    [1, 17, 200, 45, 3],
    [1, 90, 91, 92, 93, 12, 250, 7, 7, 130, 64, 33, 201, 5, 88, 19, 140, 2, 77, 31],
    [1, 60, 60, 60, 61, 62, 60, 61, 62, 9, 180],
]

DTYPE_NAME = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def classic_config(spec):
    """config.json with the field names real checkpoints use (rope_theta,
    rope_scaling), independent of the transformers version writing it."""
    c = dict(spec["cfg"])
    out = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": DTYPE_NAME[spec["dtype"]],
    }
    out.update({k: v for k, v in c.items()})
    return out


def build(spec):
    torch.manual_seed(spec["seed"])
    c = dict(spec["cfg"])
    rope_scaling = c.pop("rope_scaling", None)
    rope_params = {"rope_theta": c.pop("rope_theta"), "rope_type": "default"}
    if rope_scaling:
        rope_params.update(rope_scaling)
    cfg = LlamaConfig(**c, rope_parameters=rope_params, bos_token_id=1, eos_token_id=2,
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
        # round to the storage dtype, compute in f32 from the rounded values
        for p in model.parameters():
            p.copy_(p.to(spec["dtype"]).to(torch.float32))
    model.eval()
    return model, cfg


def write_fixture(spec, out_root):
    from safetensors.torch import save_file

    model, cfg = build(spec)
    d = os.path.join(out_root, spec["name"])
    os.makedirs(d, exist_ok=True)

    # weights, HF names, storage dtype; tied embeddings: no lm_head.weight
    sd = {k: v.detach().to(spec["dtype"]).contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    sd = {k: v for k, v in sd.items() if "rotary_emb" not in k}
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    os.chmod(os.path.join(d, "model.safetensors"), 0o644)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(classic_config(spec), f, indent=2)
        f.write("\n")

    # reload what we wrote, in f32, to make sure the reference uses the file
    ref = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    ref.generation_config.eos_token_id = None   # run all N_NEW steps
    for k, v in ref.state_dict().items():
        if k in sd:
            assert torch.equal(v, sd[k].to(torch.float32)), k

    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=N_NEW, eos_token_id=None,
                               pad_token_id=0, bos_token_id=1)
    blobs, generated, gaps = [], [], []
    with torch.no_grad():
        for ids in PROMPTS:
            x = torch.tensor([ids])
            logits = ref(x).logits[0].to(torch.float32)       # [len][vocab]
            assert logits.shape == (len(ids), cfg.vocab_size)
            blobs.append(logits.numpy().astype("<f4").tobytes())
            out = ref.generate(x, attention_mask=torch.ones_like(x), generation_config=gen_cfg)[0, len(ids):].tolist()
            assert len(out) == N_NEW, out
            # independent check: a plain argmax loop over full forwards
            seq, step_gaps = list(ids), []
            for t in range(N_NEW):
                lg = ref(torch.tensor([seq])).logits[0, -1]
                top = torch.topk(lg, 2)
                step_gaps.append(float(top.values[0] - top.values[1]))
                nxt = int(torch.argmax(lg))
                assert nxt == out[t], (spec["name"], t, nxt, out[t])
                seq.append(nxt)
            generated.append(out)
            gaps.append(step_gaps)
    with open(os.path.join(d, "logits.bin"), "wb") as f:
        for b in blobs:
            f.write(b)
    meta = {
        "produced_by": "scripts/gen-hf-fixtures.py",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "reference_dtype": "float32 (weights are the stored values upcast)",
        "storage_dtype": DTYPE_NAME[spec["dtype"]],
        "seed": spec["seed"],
        "vocab_size": cfg.vocab_size,
        "logits_file": "logits.bin",
        "logits_layout": "little-endian f32; prompts in order; [prompt_len][vocab] each",
        "prompts": PROMPTS,
        "generated": generated,
        "greedy_top2_gaps": [[round(g, 6) for g in gs] for gs in gaps],
        "min_greedy_gap": round(min(min(gs) for gs in gaps), 6),
    }
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
    print(f"{spec['name']}: {size} bytes, min greedy top-2 gap {meta['min_greedy_gap']}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "tests", "fixtures", "hf")
    torch.set_num_threads(1)   # deterministic reductions
    for spec in FIXTURES:
        write_fixture(spec, out_root)


if __name__ == "__main__":
    main()

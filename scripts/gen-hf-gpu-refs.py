#!/usr/bin/env python3
"""Reference logits from HF transformers for the CUDA engine test (GPU machine).

Builds small random Llama models with transformers (LlamaForCausalLM, weights
normal with std 0.02 as DESIGN.md asks, norm weights 1 + N(0, 0.02), bf16, on the GPU), saves each as an HF folder
(config.json with the classic field names + model.safetensors in bf16), a
random prompt (ids.txt) and transformers' own bf16 logits for every prompt
token (logits.f32, float32 [n_tokens][vocab]). tests/test_engine_cuda.c
(hf_reference) loads the folders listed in models.txt with PEREGRINE_HF_REFS.

Shapes cover GQA and MHA, head_dim 32/64/128 (scalar and tensor-core prefill
attention), tied and untied embeddings, and Llama 3.1 rope scaling.

usage: gen-hf-gpu-refs.py OUT_DIR
"""
import json, os, sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

MODELS = {
    "gqa-hd64": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=64, vocab_size=1000, rope_theta=10000.0,
                     tie_word_embeddings=False, rope_scaling=None),
    "llama3-hd128": dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=128, vocab_size=2048, rope_theta=500000.0,
                         tie_word_embeddings=True,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "mha-hd32": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, head_dim=32, vocab_size=512, rope_theta=10000.0,
                     tie_word_embeddings=False, rope_scaling=None),
}
N_TOKENS = 96


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    dev = os.environ.get("HF_DEVICE", "cuda")
    names = []
    for i, (name, kw) in enumerate(MODELS.items()):
        torch.manual_seed(1000 + i)
        cfg = LlamaConfig(max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                          hidden_act="silu", attention_bias=False, mlp_bias=False, initializer_range=0.02, **kw)
        model = LlamaForCausalLM(cfg).to(dev).to(torch.bfloat16).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):   # not all ones: a kernel that skips them fails
                    p.copy_(1.0 + 0.02 * torch.randn_like(p))
                else:
                    p.copy_(0.02 * torch.randn_like(p))
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        sd = {k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in model.state_dict().items()}
        if kw["tie_word_embeddings"]:
            sd.pop("lm_head.weight", None)
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        conf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 512,
                "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
                "torch_dtype": "bfloat16"}
        conf.update(kw)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(conf, f, indent=1)
        g = torch.Generator().manual_seed(7 + i)
        ids = torch.randint(0, kw["vocab_size"], (1, N_TOKENS), generator=g)
        # reload the saved folder the way users run it: from_pretrained in bf16
        # (rotary inv_freq stays fp32 there; casting a built model with .to()
        # would round it to bf16), and the same weights in fp32, TF32 off
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        with torch.no_grad():
            mb = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16).to(dev).eval()
            logits = mb(ids.to(dev)).logits[0].float().cpu()
            del mb
            mf = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).to(dev).eval()
            logits32 = mf(ids.to(dev)).logits[0].float().cpu()
            del mf
        own = ((logits - logits32).norm(dim=-1) / logits32.norm(dim=-1)).max().item()
        logits32.numpy().astype("float32").tofile(os.path.join(d, "logits32.f32"))
        with open(os.path.join(d, "ids.txt"), "w") as f:
            f.write(" ".join(str(int(t)) for t in ids[0]) + "\n")
        logits.numpy().astype("float32").tofile(os.path.join(d, "logits.f32"))
        names.append(name)
        print(f"{name}: {N_TOKENS} tokens, logits {tuple(logits.shape)}, |logits| rms {logits.pow(2).mean().sqrt():.3f}, "
              f"transformers bf16 vs fp32 worst-token rel err {own:.4g}")
    with open(os.path.join(out, "models.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Goldens for tests/test_model_files.c from the reference implementation.

Llama 3.1 GGUF files store RoPE scaling as a tensor rope_freqs.weight: the
divisor of each RoPE frequency, inv_freq_plain / inv_freq_llama3. This prints
those divisors as computed by HF transformers' own llama3 rope init for the
tiny test model the C test writes (head_dim 16, theta 10000, factor 8,
low_freq_factor 1, high_freq_factor 4, original context 8192), as a C array
to paste into the test. Needs torch + transformers (not needed at test time).
"""
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

def main():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=131072, rope_theta=10000.0, rope_scaling=scaling)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, torch.device("cpu"))
    half = torch.arange(0, 16, 2, dtype=torch.int64).float()
    plain = 1.0 / (10000.0 ** (half / 16))
    div = (plain / scaled).tolist()
    print("/* scripts/gen-model-goldens.py: transformers llama3 rope, head_dim 16, theta 1e4 */")
    print("static const float ROPE_FREQS_LLAMA3[8] = {" + ", ".join(repr(float(d)) + "f" for d in div) + "};")

if __name__ == "__main__":
    main()

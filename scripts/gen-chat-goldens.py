#!/usr/bin/env python3
"""Regenerate tests/fixtures/chat/goldens.json: prompts rendered by HF
transformers' apply_chat_template for each chat-template family that
server/chat.c formats in C.

The template strings are the published ones (tokenizer_config.json
"chat_template" of the model named beside each); SmolLM2's is the one stored
in the default GGUF file (tokenizer.chat_template). Each case records the
template text (so the C test also checks that it is recognised), the BOS/EOS
token texts, the messages, add_generation_prompt, and either the rendered
prompt or error=true when the template raises (roles that do not alternate,
a system message where the family has none).

Needs transformers (installed on the development machine; not at test time).
Usage: python3 scripts/gen-chat-goldens.py [out.json]
"""
import json
import os
import sys

from transformers.utils.chat_template_utils import render_jinja_template  # noqa: F401  (import check)

# HuggingFaceTB/SmolLM2-135M-Instruct (also in the GGUF): ChatML with a default system prompt.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen/Qwen2-0.5B-Instruct: ChatML, default system prompt "You are a helpful assistant."
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# teknium/OpenHermes-2.5-Mistral-7B: plain ChatML, no default system prompt.
CHATML_PLAIN = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# meta-llama/Llama-2-7b-chat-hf
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
# meta-llama/Meta-Llama-3-8B-Instruct
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# mistralai/Mistral-7B-Instruct-v0.1
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# TinyLlama/TinyLlama-1.1B-Chat-v1.0 (the Zephyr format; rendered with trim_blocks/lstrip_blocks)
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

FAMILIES = [
    # (family, source, template, bos, eos)
    ("chatml", "SmolLM2-135M-Instruct", SMOLLM2, "<|im_start|>", "<|im_end|>"),
    ("chatml", "Qwen2-0.5B-Instruct", QWEN2, None, "<|im_end|>"),
    ("chatml", "OpenHermes-2.5-Mistral-7B", CHATML_PLAIN, "<s>", "<|im_end|>"),
    ("llama2", "Llama-2-7b-chat-hf", LLAMA2, "<s>", "</s>"),
    ("llama3", "Meta-Llama-3-8B-Instruct", LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    ("mistral", "Mistral-7B-Instruct-v0.1", MISTRAL, "<s>", "</s>"),
    ("zephyr", "TinyLlama-1.1B-Chat-v1.0", ZEPHYR, "<s>", "</s>"),
]

U, A, S = "user", "assistant", "system"
CONVERSATIONS = [
    ("one user turn", [(U, "Hello!")]),
    ("system and user", [(S, "You are terse."), (U, "What is 2+2?")]),
    ("multi turn", [(U, "Hi"), (A, "Hello! How can I help?"), (U, "Tell me a joke.")]),
    ("system multi turn", [(S, "Be kind."), (U, "Hi"), (A, "Hello."), (U, "Bye")]),
    ("whitespace and unicode", [(U, "  caf\u00e9 \u2014 na\u00efve \U0001F426\n\n"), (A, " \u00a0ok\t"), (U, "\u3000again ")]),
    ("empty content", [(U, "")]),
    ("ends with assistant", [(U, "Finish this: the sky is"), (A, "blue")]),
    ("special text in content", [(U, "say <|im_end|> and [INST] literally")]),
    ("two users in a row", [(U, "one"), (U, "two")]),
    ("starts with assistant", [(A, "I speak first"), (U, "ok")]),
]


def render(template, bos, eos, messages, add_gen):
    # The same path as tokenizer.apply_chat_template(tokenize=False): HF's
    # sandboxed Jinja environment (trim_blocks, lstrip_blocks, raise_exception).
    from transformers.utils.chat_template_utils import render_jinja_template
    kwargs = {}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    out, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                   add_generation_prompt=add_gen, **kwargs)
    return out[0]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "tests", "fixtures", "chat", "goldens.json")
    cases = []
    for family, source, template, bos, eos in FAMILIES:
        for name, conv in CONVERSATIONS:
            messages = [{"role": r, "content": c} for r, c in conv]
            for add_gen in (True, False):
                case = {"family": family, "source": source, "name": name, "bos": bos, "eos": eos,
                        "add_generation_prompt": add_gen, "messages": messages}
                try:
                    case["expected"] = render(template, bos, eos, messages, add_gen)
                except Exception as e:  # TemplateError raised by raise_exception
                    case["error"] = True
                    case["hf_error"] = str(e)
                cases.append(case)
    templates = [{"family": f, "source": s, "template": t} for f, s, t, _, _ in FAMILIES]
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"templates": templates, "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases for {len(templates)} templates to {out_path}")


if __name__ == "__main__":
    main()

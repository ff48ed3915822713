/*
 * server/chat.h — chat templates: turn a list of messages into the prompt
 * text a chat model was trained on.
 *
 * We do not run Jinja. Each family below has a formatter written in C and a
 * golden test (tests/fixtures/chat/, made by scripts/gen-chat-goldens.py with
 * HF transformers' apply_chat_template) proving byte-equal output:
 *   chatml   <|im_start|>role\n...<|im_end|>\n (SmolLM2, Qwen, OpenHermes);
 *            the default system prompt a template inserts when the first
 *            message is not a system message is read from the template text
 *   llama2   [INST] <<SYS>> ... <</SYS>> ... [/INST] (Llama 2 chat)
 *   llama3   <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> (Llama 3)
 *   mistral  [INST] ... [/INST] (Mistral-7B-Instruct v0.1)
 *   zephyr   <|user|>\n...</s>\n (Zephyr, TinyLlama chat)
 * The family is recognised from the model's own template text (GGUF
 * tokenizer.chat_template or tokenizer_config.json), or forced by name
 * (--chat-template). A template we do not recognise is refused with a message
 * that says how to choose one: we never guess silently.
 *
 * Rendered text contains the special tokens as text (<s>, <|im_start|>, ...);
 * tokenize it with parse_special = 1 and add_bos = 0, as HF does for
 * apply_chat_template(tokenize=True).
 *
 * Thread safety: every function here is pure (no shared state).
 */
#ifndef PG_CHAT_H
#define PG_CHAT_H

#include "../common/common.h"
#include "../model/model.h"

typedef struct {
    const char *role;     /* "system", "user" or "assistant" */
    const char *content;  /* UTF-8 text */
} chat_message;

/* A recognised template: the family and, for chatml, the default system
 * prompt inserted when the conversation has none (NULL: none). */
typedef struct {
    chat_template_kind kind;
    char default_system[512];
    int  has_default_system;
} chat_template;

/* "chatml", "llama2", ... ; NULL for CHAT_TEMPLATE_UNKNOWN. */
const char *chat_template_kind_name(chat_template_kind k);
/* The names accepted by --chat-template, for messages: "chatml, llama2, ...". */
const char *chat_template_names(void);

/* Recognise a template text. Returns PG_OK and fills *out, or
 * PG_EUNSUPPORTED (with a message naming --chat-template) when the text is
 * not one of the families above. NULL text is PG_EUNSUPPORTED too. */
int chat_template_detect(const char *jinja, chat_template *out, pg_err *err);
/* A template by name (see chat_template_names); "chatml" has no default
 * system prompt. PG_EINVAL for an unknown name. */
int chat_template_from_name(const char *name, chat_template *out, pg_err *err);
/* The template for a model: forced by name when `name` is non-NULL and not
 * "auto", otherwise detected from m->chat_template. */
int chat_template_for_model(const model *m, const char *name, chat_template *out, pg_err *err);

/* Render messages. bos/eos are the model's BOS/EOS token texts (used by the
 * families whose templates print them; NULL means ""). Errors are PG_EINVAL
 * with a message naming the offending message index: unknown role, roles
 * that do not alternate where the family requires it, a system message where
 * the family has none. *out is malloc'd, NUL-terminated. */
int chat_render(const chat_template *t, const chat_message *msgs, int n_msgs,
                int add_generation_prompt, const char *bos, const char *eos,
                char **out, pg_err *err);

/* chat_template_for_model + chat_render with the model's BOS/EOS texts. */
int chat_render_for_model(const model *m, const char *template_name,
                          const chat_message *msgs, int n_msgs, int add_generation_prompt,
                          char **out, pg_err *err);

#endif

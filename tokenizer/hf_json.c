/* tokenizer/hf_json.c — HF tokenizer.json (byte-level BPE) and the
 * tokenizer_config.json beside it.
 *
 * What is read: model (BPE: vocab, merges as "a b" strings or [a, b] pairs,
 * unk_token, fuse_unk, ignore_merges), added_tokens (id, content, special,
 * lstrip, rstrip), pre_tokenizer (ByteLevel / Split with Isolated behaviour /
 * Digits, or a Sequence of them ending in ByteLevel), normalizer (none; NFC is
 * accepted with a warning and not applied), post_processor (only to learn
 * whether a template puts BOS first). Anything else that changes ids is
 * refused with PG_EUNSUPPORTED rather than silently tokenized differently.
 */
#include "tok_internal.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static const char *json_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int json_bool(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* A JSON number that is an integer in [0, TOK_MAX_VOCAB); -1 otherwise. */
static int json_id(const cJSON *v) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d < TOK_MAX_VOCAB) || d != (double)(int)d) return -1;
    return (int)d;
}

/* Escape a literal string for PCRE2 (HF Split with {"String": ...}). */
static char *regex_escape(const char *s) {
    size_t n = strlen(s);
    char *o = pg_xmalloc(2 * n + 1), *p = o;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80 && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            *p++ = '\\';
        *p++ = (char)c;
    }
    *p = 0;
    return o;
}

static int add_stage(tok_tokenizer *t, const char *pattern, const char *path, pg_err *err) {
    if (t->n_stages == TOK_MAX_STAGES)
        return pg_errf(err, PG_EUNSUPPORTED, "%s: more than %d pre-tokenizer splits", path, TOK_MAX_STAGES);
    pcre2_code *re = tok__regex_compile(pattern, path, err);
    if (!re) return err->code;
    t->stage[t->n_stages++] = re;
    return PG_OK;
}

static int parse_pre(tok_tokenizer *t, const cJSON *pre, int *have_bl, const char *path, pg_err *err) {
    const char *type = json_str(pre, "type");
    if (!type) return pg_errf(err, PG_EFORMAT, "%s: pre_tokenizer without a type", path);
    if (*have_bl)
        return pg_errf(err, PG_EUNSUPPORTED, "%s: pre-tokenizer %s after ByteLevel is not supported", path, type);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers"), *it;
        if (!cJSON_IsArray(list)) return pg_errf(err, PG_EFORMAT, "%s: Sequence without pretokenizers", path);
        cJSON_ArrayForEach(it, list) PG_TRY(parse_pre(t, it, have_bl, path, err));
        return PG_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        *have_bl = 1;
        t->bl_add_prefix_space = json_bool(pre, "add_prefix_space", 0);
        if (json_bool(pre, "use_regex", 1) && !(t->bl_re = tok__regex_compile(tok__gpt2_regex, path, err)))
            return err->code;
        return PG_OK;
    }
    if (!strcmp(type, "Digits"))
        return add_stage(t, json_bool(pre, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+", path, err);
    if (!strcmp(type, "Split")) {
        const char *beh = json_str(pre, "behavior");
        if (!beh || strcmp(beh, "Isolated") || json_bool(pre, "invert", 0))
            return pg_errf(err, PG_EUNSUPPORTED, "%s: Split with behavior %s%s is not supported (Isolated only)",
                           path, beh ? beh : "(none)", json_bool(pre, "invert", 0) ? " inverted" : "");
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pre, "pattern");
        const char *rx = json_str(pat, "Regex"), *lit = json_str(pat, "String");
        if (rx) return add_stage(t, rx, path, err);
        if (lit && *lit) {
            char *e = regex_escape(lit);
            int rc = add_stage(t, e, path, err);
            free(e);
            return rc;
        }
        return pg_errf(err, PG_EFORMAT, "%s: Split without a pattern", path);
    }
    return pg_errf(err, PG_EUNSUPPORTED, "%s: pre-tokenizer %s is not supported (byte-level BPE only)", path, type);
}

static int check_normalizer(const cJSON *nz, const char *path, pg_err *err) {
    if (!nz || cJSON_IsNull(nz)) return PG_OK;
    const char *type = json_str(nz, "type");
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(nz, "normalizers"), *it;
        cJSON_ArrayForEach(it, list) PG_TRY(check_normalizer(it, path, err));
        return PG_OK;
    }
    if (type && !strcmp(type, "NFC")) {
        LOG_WARN("%s: NFC normalizer is not applied (text that is not already NFC may tokenize differently)", path);
        return PG_OK;
    }
    return pg_errf(err, PG_EUNSUPPORTED, "%s: normalizer %s is not supported", path, type ? type : "(untyped)");
}

/* "bos_token": "<s>" or {"content": "<s>", ...} */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    return json_str(v, "content");
}

/* Id of the first special token of post_processor's single template; -1 if none. */
static int template_first_special(const tok_tokenizer *t, const cJSON *pp) {
    const char *type = json_str(pp, "type");
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(pp, "processors")) {
            int id = template_first_special(t, it);
            if (id >= 0) return id;
        }
        return -1;
    }
    if (!type || strcmp(type, "TemplateProcessing")) return -1;
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
    const cJSON *first = cJSON_IsArray(single) ? single->child : NULL;
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(first, "SpecialToken");
    const char *name = json_str(sp, "id");
    return name ? tok_token_id(t, name) : -1;
}

static void read_config(tok_tokenizer *t, const char *path, const cJSON *root) {
    const char *slash = strrchr(path, '/');
    size_t dl = slash ? (size_t)(slash - path) + 1 : 0;
    char *cpath = pg_xmalloc(dl + 32);
    memcpy(cpath, path, dl);
    strcpy(cpath + dl, "tokenizer_config.json");
    char *data = NULL;
    size_t n = 0;
    cJSON *cfg = NULL;
    if (pg_read_file(cpath, &data, &n, NULL) == PG_OK) {
        cfg = cJSON_ParseWithLength(data, n);
        if (!cfg) LOG_WARN("%s: not valid JSON; ignored", cpath);
    }
    const char *bos = cfg ? config_token(cfg, "bos_token") : NULL;
    const char *eos = cfg ? config_token(cfg, "eos_token") : NULL;
    int tmpl_bos = template_first_special(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"));
    t->bos_id = bos ? tok_token_id(t, bos) : tmpl_bos;
    t->eos_id = eos ? tok_token_id(t, eos) : -1;
    if (!cfg || !eos) {   /* no config: the usual end-of-text names */
        static const char *const names[] = { "</s>", "<|endoftext|>", "<|end_of_text|>", NULL };
        for (int i = 0; names[i] && t->eos_id < 0; i++) t->eos_id = tok_token_id(t, names[i]);
    }
    const char *pad = cfg ? config_token(cfg, "pad_token") : NULL;
    t->pad_id = pad ? tok_token_id(t, pad) : -1;
    const cJSON *ab = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token") : NULL;
    t->add_bos = cJSON_IsBool(ab) ? cJSON_IsTrue(ab) : (tmpl_bos >= 0 && tmpl_bos == t->bos_id);
    if (t->add_bos && t->bos_id < 0) t->add_bos = 0;
    cJSON_Delete(cfg);
    free(data);
    free(cpath);
}

/* Merge entry r as (left, right): "a b" or ["a", "b"]. */
static int merge_parts(const cJSON *m, const char **l, size_t *ll, const char **r, size_t *rl) {
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ')) return -1;
        *l = s; *ll = (size_t)(sp - s);
        *r = sp + 1; *rl = strlen(sp + 1);
        return 0;
    }
    if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
        cJSON_IsString(m->child->next)) {
        *l = m->child->valuestring; *ll = strlen(*l);
        *r = m->child->next->valuestring; *rl = strlen(*r);
        return 0;
    }
    return -1;
}

static int load(const char *path, const cJSON *root, tok_tokenizer **out, pg_err *err) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const char *mtype = json_str(model, "type");
    if (!cJSON_IsObject(model) || !cJSON_IsObject(vocab))
        return pg_errf(err, PG_EFORMAT, "%s: no model.vocab object", path);
    if (mtype && strcmp(mtype, "BPE"))
        return pg_errf(err, PG_EUNSUPPORTED, "%s: model type %s is not supported (BPE only)", path, mtype);
    if (!cJSON_IsArray(merges)) return pg_errf(err, PG_EFORMAT, "%s: no model.merges array", path);
    if (json_bool(model, "byte_fallback", 0))
        return pg_errf(err, PG_EUNSUPPORTED, "%s: BPE with byte_fallback is not supported; "
                       "use the sentencepiece tokenizer.model", path);
    const char *csp = json_str(model, "continuing_subword_prefix"), *eow = json_str(model, "end_of_word_suffix");
    if ((csp && *csp) || (eow && *eow))
        return pg_errf(err, PG_EUNSUPPORTED, "%s: continuing_subword_prefix / end_of_word_suffix are not supported", path);
    PG_TRY(check_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path, err));

    int n_vocab = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        int id = json_id(it);
        if (id < 0) return pg_errf(err, PG_EFORMAT, "%s: vocab entry '%.40s' has a bad id", path, it->string);
        if (id >= n_vocab) n_vocab = id + 1;
    }
    cJSON_ArrayForEach(it, added) {
        int id = json_id(cJSON_GetObjectItemCaseSensitive(it, "id"));
        if (id < 0 || !json_str(it, "content"))
            return pg_errf(err, PG_EFORMAT, "%s: added_tokens entry without a valid id / content", path);
        if (id >= n_vocab) n_vocab = id + 1;
    }
    if (n_vocab == 0) return pg_errf(err, PG_EFORMAT, "%s: empty vocabulary", path);

    tok_tokenizer *t = tok__new(TOK_KIND_BPE, n_vocab);
    int rc = PG_OK;
    cJSON_ArrayForEach(it, vocab) {
        int id = json_id(it);
        size_t n = strlen(it->string);
        if (t->piece[id].len) { rc = pg_errf(err, PG_EFORMAT, "%s: id %d appears twice in vocab", path, id); goto fail; }
        if (n == 0 || n > TOK_MAX_PIECE) { rc = pg_errf(err, PG_EFORMAT, "%s: vocab entry %d has length %zu", path, id, n); goto fail; }
        t->piece[id] = tok__arena_put(t, it->string, n);
    }
    cJSON_ArrayForEach(it, added) {   /* ids only in added_tokens (Llama 3) get their content */
        int id = json_id(cJSON_GetObjectItemCaseSensitive(it, "id"));
        const char *c = json_str(it, "content");
        /* HF decodes an added id as its content, whatever the vocab says. */
        size_t n = strlen(c);
        tok_span sp = t->piece[id];
        if (n <= TOK_MAX_PIECE && (sp.len != n || memcmp(t->arena + sp.off, c, n)))
            t->piece[id] = tok__arena_put(t, c, n);
    }
    tok__build_vocab_map(t);
    cJSON_ArrayForEach(it, added) {
        const char *c = json_str(it, "content");
        if (json_bool(it, "single_word", 0))
            LOG_WARN("%s: added token '%s' has single_word, which is not applied", path, c);
        tok__add_added(t, json_id(cJSON_GetObjectItemCaseSensitive(it, "id")), c, strlen(c),
                       json_bool(it, "special", 0), json_bool(it, "lstrip", 0), json_bool(it, "rstrip", 0));
    }
    tok__finish_added(t);

    int have_bl = 0;
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (pre && !cJSON_IsNull(pre) && (rc = parse_pre(t, pre, &have_bl, path, err)) != PG_OK) goto fail;
    if (!have_bl) {
        rc = pg_errf(err, PG_EUNSUPPORTED, "%s: no ByteLevel pre-tokenizer (only byte-level BPE is supported)", path);
        goto fail;
    }
    t->ignore_merges = json_bool(model, "ignore_merges", 0);
    const char *unk = json_str(model, "unk_token");
    t->bpe_unk_id = unk ? tok_token_id(t, unk) : -1;
    t->unk_id = t->bpe_unk_id;
    t->fuse_unk = json_bool(model, "fuse_unk", 0);

    int nm = cJSON_GetArraySize(merges), i = 0;
    const char **l = pg_xmalloc((size_t)(nm ? nm : 1) * sizeof *l);
    const char **r = pg_xmalloc((size_t)(nm ? nm : 1) * sizeof *r);
    size_t *ll = pg_xmalloc((size_t)(nm ? nm : 1) * sizeof *ll);
    size_t *rl = pg_xmalloc((size_t)(nm ? nm : 1) * sizeof *rl);
    cJSON_ArrayForEach(it, merges) {
        if (merge_parts(it, &l[i], &ll[i], &r[i], &rl[i])) {
            rc = pg_errf(err, PG_EFORMAT, "%s: merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", path, i);
            break;
        }
        i++;
    }
    if (rc == PG_OK) rc = tok__bpe_add_merges(t, nm, l, ll, r, rl, path, err);
    free(l); free(r); free(ll); free(rl);
    if (rc != PG_OK) goto fail;
    tok__bpe_init_bytes(t);
    read_config(t, path, root);
    *out = t;
    return PG_OK;
fail:
    tok_free(t);
    return rc;
}

int tok_load_hf_json(const char *path, tok_tokenizer **out, pg_err *err) {
    if (!path || !out) return pg_errf(err, PG_EINVAL, "tok_load_hf_json: NULL argument");
    *out = NULL;
    pg_err local;
    if (!err) err = &local;
    char *data;
    size_t n;
    PG_TRY(pg_read_file(path, &data, &n, err));
    cJSON *root = cJSON_ParseWithLength(data, n);
    free(data);
    if (!root) return pg_errf(err, PG_EFORMAT, "%s: not valid JSON", path);
    int rc = cJSON_IsObject(root) ? load(path, root, out, err)
                                  : pg_errf(err, PG_EFORMAT, "%s: not a JSON object", path);
    cJSON_Delete(root);
    return rc;
}

// tokenizer/spm_shim.cc — sentencepiece behind a C interface (spm_shim.h).
// Every entry point catches all exceptions: a bad model file must come back as
// an error, never unwind into C.
#include "spm_shim.h"

#include <sentencepiece_processor.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

namespace {

struct Handle {
    sentencepiece::SentencePieceProcessor sp;
};

void set_err(char *buf, size_t cap, const char *what, const std::string &msg) {
    if (!buf || cap == 0) return;
    std::snprintf(buf, cap, "%s: %s", what, msg.c_str());
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
}

}  // namespace

extern "C" void *spm_shim_load(const void *proto, size_t len, char *errbuf, size_t errcap) {
    Handle *h = nullptr;
    try {
        h = new Handle();
        auto st = h->sp.LoadFromSerializedProto(
            std::string_view(static_cast<const char *>(proto), len));
        if (!st.ok()) {
            set_err(errbuf, errcap, "sentencepiece", st.ToString());
            delete h;
            return nullptr;
        }
        return h;
    } catch (const std::exception &e) {
        set_err(errbuf, errcap, "sentencepiece", e.what());
    } catch (...) {
        set_err(errbuf, errcap, "sentencepiece", "unknown exception");
    }
    delete h;
    return nullptr;
}

extern "C" void spm_shim_free(void *h) {
    delete static_cast<Handle *>(h);
}

extern "C" int spm_shim_piece_size(const void *h) {
    try {
        return static_cast<const Handle *>(h)->sp.GetPieceSize();
    } catch (...) {
        return -1;
    }
}

extern "C" void spm_shim_special_ids(const void *h, int ids[4]) {
    ids[0] = ids[1] = ids[2] = ids[3] = -1;
    try {
        const auto &sp = static_cast<const Handle *>(h)->sp;
        ids[0] = sp.unk_id();
        ids[1] = sp.bos_id();
        ids[2] = sp.eos_id();
        ids[3] = sp.pad_id();
    } catch (...) {
    }
}

extern "C" int spm_shim_encode(const void *h, const char *s, size_t n, int32_t **ids, int *n_ids,
                               int *cap, char *errbuf, size_t errcap) {
    try {
        std::vector<int> v;
        auto st = static_cast<const Handle *>(h)->sp.Encode(std::string_view(s, n), &v);
        if (!st.ok()) {
            set_err(errbuf, errcap, "sentencepiece encode", st.ToString());
            return -1;
        }
        size_t need = static_cast<size_t>(*n_ids) + v.size();
        if (need > static_cast<size_t>(INT32_MAX / 2)) {
            set_err(errbuf, errcap, "sentencepiece encode", "too many tokens");
            return -1;
        }
        if (need > static_cast<size_t>(*cap)) {
            size_t nc = need < 64 ? 64 : need * 2;
            void *p = std::realloc(*ids, nc * sizeof(int32_t));
            if (!p) {
                set_err(errbuf, errcap, "sentencepiece encode", "out of memory");
                return -1;
            }
            *ids = static_cast<int32_t *>(p);
            *cap = static_cast<int>(nc);
        }
        for (int id : v) (*ids)[(*n_ids)++] = id;
        return 0;
    } catch (const std::exception &e) {
        set_err(errbuf, errcap, "sentencepiece encode", e.what());
    } catch (...) {
        set_err(errbuf, errcap, "sentencepiece encode", "unknown exception");
    }
    return -1;
}

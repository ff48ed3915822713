#!/usr/bin/env python3
"""Regenerate the tokenizer parity goldens under tests/fixtures/tokenizer/.

The C tests (tests/test_tokenizer.c) compare Peregrine's tokenizers against the
files written here, so CI needs none of the Python packages below. Run it on a
machine with `sentencepiece`, `tokenizers`, `transformers` and `gguf` installed
and the default model fetched (scripts/fetch-model.sh):

    python3 scripts/gen-tokenizer-goldens.py

References:
  * sentencepiece's own Python binding on tests/data/llama2-tokenizer.model
    (copied from ../shared/data; the public Llama 2 tokenizer, unmodified).
  * HF `tokenizers` for the default model's vocabulary. The tokenizer is built
    from the GGUF by transformers (AutoTokenizer(gguf_file=...)). transformers'
    GGUF conversion gives it a plain ByteLevel pre-tokenizer, but SmolLM2's own
    tokenizer.json runs Digits(individual_digits=true) before ByteLevel (the
    SmolLM/StarCoder tokenizer recipe; llama.cpp's "smollm" pre-tokenizer
    splits \\p{N} first for the same reason), so the pre-tokenizer is replaced
    by that Sequence and the post-processor by ByteLevel before export. The
    script prints how many corpus strings the two disagree on.

Invalid UTF-8: HF tokenizers only ever sees Python str, so its goldens are
computed on the corpus bytes decoded with errors="replace" (one U+FFFD per
maximal invalid subpart). Peregrine's byte-level BPE applies the same
replacement to raw input bytes before encoding. sentencepiece takes the raw
bytes itself (its normalizer replaces each invalid byte by U+FFFD).
"""
import base64
import json
import os
import random
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
SPM_SRC = os.path.join(ROOT, "..", "shared", "data", "llama2-tokenizer.model")
SPM_MODEL = os.path.join(ROOT, "tests", "data", "llama2-tokenizer.model")
GGUF = os.path.expanduser("~/.cache/peregrine/SmolLM2-135M-Instruct.Q4_1.gguf")

GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


# ---------------------------------------------------------------- corpus
def corpus():
    """(category, bytes) pairs; deterministic."""
    out = []

    def add(cat, items):
        for s in items:
            out.append((cat, s if isinstance(s, bytes) else s.encode("utf-8")))

    add("prose", [
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "Peregrine falcons are the fastest birds on Earth, reaching over 320 km/h in a dive.",
        "It was the best of times, it was the worst of times, it was the age of wisdom.",
        "I'm sure you'll agree: they've done what we'd hoped, and it's fine.",
        "DON'T SHOUT! I'LL HEAR YOU'RE FINE, WE'VE HEARD, HE'D SAY, SHE'S HERE.",
        "Don't, won't, can't, shouldn't've, y'all, o'clock, rock'n'roll.",
        "Mr. Smith went to Washington D.C. on Jan. 5th, 2021 (at 9:30 a.m.).",
        "\"Quoted text,\" she said, 'with single quotes' and `backticks`.",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
        "Question? Answer! Exclamation!!! Ellipsis... Em-dash—en-dash–hyphen-minus.",
        "A sentence with a trailing space ",
        " A sentence with a leading space",
        "Email me at someone@example.com or visit https://example.org/path?q=1&r=2#frag.",
        "The price is $19.99 (was €25,00 / £21.50 / ¥3000).",
        "Temperature: -40°C equals -40°F; 100% sure ± 0.5‰.",
        "Call +1 (555) 123-4567 ext. 89.",
        "user: Write a haiku about a peregrine falcon.\nassistant: Swift shadow falls —",
        "Once upon a time, there was a little girl named Lily. She loved to play outside.",
        "THIS IS ALL CAPS. this is all lower. ThIs Is MiXeD cAsE.",
        "camelCaseWords and snake_case_words and kebab-case-words and PascalCase.",
        "e.g. i.e. etc. vs. cf. et al. a.k.a.",
        "He said: «Bonjour» — „Guten Tag“ — “Hello” — ‘hi’ — 「こんにちは」.",
        "Bullet list:\n- one\n- two\n  - nested\n* star\n1. numbered",
        "# Heading\n\n**bold** _italic_ `code` [link](http://x.y) > quote",
        "| a | b |\n|---|---|\n| 1 | 2 |",
        "Ünïcödé wörds: naïve café résumé coöperate façade jalapeño.",
        "Straße, Maß, groß — ß vs SS; İstanbul, ıi; Ǆ ǅ ǆ.",
        "Ångström Œuvre Æsir Ðórr Þing Łódź Čeština Ørsted.",
        "The year 1984 and the year 2001 and the number 42.",
        "Tabs\tseparate\tthese\twords.",
        "Line one.\nLine two.\n\nLine four after a blank line.",
        "Windows line endings\r\nare here\r\n",
        "ſtrange long s: 'ſ and 'S and 'ſt",
        "What's up? It's 5 o'clock's shadow.",
        "'tis the season; 'twas the night",
        "a b c d e f g h i j k l m n o p q r s t u v w x y z",
        "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "The END.",
    ])
    add("code", [
        "int main(void) {\n    printf(\"hello, world\\n\");\n    return 0;\n}\n",
        "#include <stdio.h>\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\n",
        "for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }",
        "static inline uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }",
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "class Foo(Bar):\n    \"\"\"Docstring.\"\"\"\n\n    def __init__(self, x: int = 0) -> None:\n        self._x = x\n",
        "import numpy as np\nx = np.arange(10, dtype=np.float32).reshape(2, 5)\nprint(x @ x.T)\n",
        "    # indented comment\n\tif x:\n\t\tpass\n",
        "const f = async (a, b) => { await fetch(`/api/${a}?b=${b}`); };",
        "function add(a,b){return a+b}console.log(add(1,2));",
        "fn main() {\n    let v: Vec<u8> = vec![1, 2, 3];\n    println!(\"{:?}\", v.iter().map(|x| x * 2).collect::<Vec<_>>());\n}",
        "impl<'a, T: Clone + Send> Iterator for Foo<'a, T> where T: 'static { type Item = &'a T; }",
        "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
        "SELECT id, name FROM users WHERE age >= 18 AND name LIKE 'A%' ORDER BY id DESC LIMIT 10;",
        "<html><head><title>T</title></head><body><p class=\"x\">Hi &amp; bye</p></body></html>",
        "<div id=\"main\">\n  <span>text</span>\n</div>",
        "{\"key\": \"value\", \"n\": 12, \"arr\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
        "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done | sort -u > out.log 2>&1\n",
        "main :: IO ()\nmain = mapM_ print $ takeWhile (< 100) $ map (^2) [1..]",
        "(defun square (x) (* x x))",
        "public static void main(String[] args) { System.out.println(\"Hello\"); }",
        "x = [i**2 for i in range(10) if i % 2 == 0]  # list comprehension",
        "a += 1; b -= 2; c *= 3; d /= 4; e %= 5; f <<= 6; g >>= 7; h &= 8; i |= 9; j ^= 10;",
        "if (a == b && c != d || !e) { x = y ?? z; } else if (p === q) { r = s?.t; }",
        "std::vector<std::unique_ptr<Node>> nodes; nodes.emplace_back(std::make_unique<Node>());",
        "@decorator\ndef f(*args, **kwargs):\n    yield from g()\n",
        "    \n    \n",
        "}\n\n\n\n{",
        "0x7fffffff 0b1010 0o755 1e-9 3.14f 1_000_000 6.022e23",
        "printf(\"%d %s %.2f %x %%\\n\", i, s, f, u);",
        "regex = r\"^(?P<name>[a-z]+)\\s*=\\s*(\\d+)$\"",
        "git commit -m \"Fix bug #123\" && git push origin main",
        "CUDA_VISIBLE_DEVICES=0 python train.py --lr 3e-4 --batch-size=32",
        "__global__ void k(float *x, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] *= 2.f; }",
        "// TODO(someone): fix this\n/* block\n * comment */",
        "<?php echo $var; ?>",
        "let x = 5 in x * x",
        "matrix[i][j] = matrix[i-1][j-1] + 1",
        "a\\b\\c C:\\Windows\\System32 /usr/local/bin ~/.config",
        "    return self.forward(x)        ",
    ])
    add("whitespace", [
        " ", "  ", "   ", "    ", "        ", " " * 33,
        "\t", "\t\t", "\t \t", "\n", "\n\n", "\n\n\n\n\n", "\r\n", "\r", "\r\r\n\n",
        " \n", "\n ", " \n ", "\t\n\t", "  \n  \n  ",
        "a  b", "a   b", "a    b", "a\t\tb", "a \t b", "a\n\nb", "a \n b", "a\n \nb",
        "trailing   ", "   leading", "  both  ", "x\n", "\nx",
        "word \u00a0word", "nbsp\u00a0\u00a0nbsp", "ideographic\u3000space\u3000\u3000x",
        "nel\u0085line", "x \u0085", "mongolian\u180evowel", "line\u2028sep\u2029para",
        "thin\u2009space\u200ahair", "zero\u200bwidth\u200cjoiner\u200dx", "bom\ufeffbom",
        "vt\x0bff\x0cx", "fs\x1cgs\x1drs\x1eus\x1fx",
        "a  1", "x   12", "  7", "\t3", "\n4\n", "1 2  3   4",
        # U+180E is not White_Space (Oniguruma) but is \s in PCRE2; U+0085 is both.
        "x \u180ey", "a\u180e\u180e b", " \u180e", "\u180e \u180e", "x \u0085y", "a\u0085\u0085 b",
    ])
    add("numbers", [
        "0", "7", "42", "123", "1234", "12345", "123456789", "3.14159", "2.718281828459045",
        "1,000,000", "1.000.000,50", "-17", "+3", "1e10", "6.02e-23", "0.0001", "99%", "50/50",
        "2024-01-15", "12:34:56", "v1.2.3", "192.168.0.1", "0xDEADBEEF", "#ff00aa",
        "3141592653589793238462643383279502884197169399375105820974944592307816406286",
        "1" * 100, "12" * 40, "a1b2c3d4", "abc123def456", "H2O CO2 C6H12O6",
        "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "０１２３４５６７８９", "²³¹ ½ ¾ ⅓", "Ⅻ Ⅳ ⅸ", "①②③", "𝟘𝟙𝟚",
        "Price: 1 234,56 €", "x1 x12 x123 x1234", "a 1b 12c 123",
    ])
    add("cjk", [
        "你好，世界！", "我爱自然语言处理。", "这是一个测试句子，包含标点符号。",
        "今日は良い天気ですね。", "ひらがな カタカナ 漢字", "東京都渋谷区 1-2-3",
        "안녕하세요, 세계!", "한국어 문장입니다.", "中文English混合text",
        "日本語とEnglishのmix 123", "ｶﾀｶﾅ 半角", "繁體中文：臺灣、香港", "𠀋𠀍𠀎 (CJK Ext B)",
        "【重要】お知らせ", "“引号”和‘单引号’", "一二三四五六七八九十", "龍龘齉", "ㄅㄆㄇㄈ",
    ])
    add("emoji", [
        "😀", "😀😃😄😁", "Hello 👋 world 🌍!", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇫🇷🇯🇵",
        "❤️", "☺︎", "1️⃣ #️⃣", "🧑🏿‍🚀", "🫠🫶", "🐦‍🔥", "emoji🙂in🙂text", "🤖: beep boop",
        "✅ ❌ ⚠️ ➡️ ⭐", "😂" * 20,
    ])
    add("accents", [
        "e\u0301", "\u00e9", "cafe\u0301 vs caf\u00e9", "n\u0303", "a\u0300\u0301\u0302\u0303",
        "Z\u0351\u0352\u0353a\u0354\u0355l\u0356\u0357g\u0358\u0359o\u035a",
        "Tiếng Việt có dấu", "Ελληνικά: Γειά σου Κόσμε", "Русский текст, ёЁ", "Українська: їЇ єЄ ґҐ",
        "Ἀθῆναι", "Dž dž", "ﬁ ﬂ ﬀ", "Å (U+212B) vs Å", "ǅungla", "İi Iı", "ŉ", "ẞ",
        "Ĳsselmeer", "ǰ",
    ])
    add("scripts", [
        "مرحبا بالعالم", "العربية: كتاب، قلم؛ مدرسة؟", "שלום עולם", "עברית עם ניקוד: שָׁלוֹם",
        "नमस्ते दुनिया", "हिन्दी में वाक्य।", "স্বাগতম", "ਪੰਜਾਬੀ", "தமிழ் மொழி", "తెలుగు",
        "ภาษาไทยไม่มีช่องว่าง", "ລາວ", "မြန်မာ", "ქართული", "Հայերեն", "አማርኛ", "ᚠᚢᚦᚨᚱᚲ",
        "ⴰⵣⵓⵍ", "Ꭰ Ꭱ Ꭲ", "ᓀᐦᐃᔭᐍᐏᐣ", "مرحبا Hello שלום 123", "سلام دنیا ۱۲۳",
        "𐌰𐌱𐌲", "𓀀𓀁𓀂", "ꦲꦏ꧀ꦱꦫ",
    ])
    add("special", [
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<unk>",
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
        "text<|endoftext|>more text", "<s>[INST] Hi [/INST]", "</s><s>", "<s> <s>  </s>",
        "before <|im_end|> after", "<|im_start|><|im_end|><|im_start|>", "<|im_start|>" * 3,
        "<|im_start", "im_end|>", "<|im_start|", "<|IM_START|>", "< |im_start|>", "<<|im_end|>>",
        "<repo_name>x<file_sep>y<filename>z", "<gh_stars>10", "<jupyter_code>print(1)<jupyter_output>1",
        "<empty_output>", "<issue_start>Bug<issue_comment>fix<issue_closed>",
        "<|endoftext|><|endoftext|>", "<unk>unknown</unk>", "a<s>b</s>c", "<s>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>",
        " <|im_start|> ", "\n<|im_end|>\n",
    ])
    add("long", [
        "supercalifragilisticexpialidocious",
        "Pneumonoultramicroscopicsilicovolcanoconiosis",
        "Rindfleischetikettierungsüberwachungsaufgabenübertragungsgesetz",
        "a" * 1000, "ab" * 500, "abc" * 300 + "d", "x" * 4000,
        "https://www.example.com/" + "very/long/path/" * 20 + "index.html?" + "&".join("k%d=v%d" % (i, i) for i in range(30)),
        base64.b64encode(bytes(range(256)) * 3).decode(),
        "0123456789abcdef" * 40,
        "-" * 200, "=" * 80, "." * 100, "_" * 64, "!" * 50, " " * 500, "\n" * 200,
        "The quick brown fox. " * 60,
        "ÄÖÜäöüß" * 80, "日本" * 300, "🙂" * 200,
        "a" * 100 + " " + "b" * 100 + "\n" + "c" * 100,
    ])
    add("edge", [
        "", "a", "Z", ".", "'", "''", "'s", "'S", " 's", "'ll", "''ll", "\"", "\\", "~", "`",
        "\x00", "a\x00b", "\x00\x00\x00", "\x01\x02\x03", "\x07\x08", "\x7f", "\x1b[31mred\x1b[0m",
        "\u00ad", "\ufffd", "\ufffd\ufffd", "\U0010ffff", "\ue000", "\uffff", "a\u0004b\u0006c\u0013d\u0014e",
        "\u2047", "▁", "▁▁hello", "Ġ", "ĠHello", "Ċ", "<0x41>", "<0x0A>",
    ])
    add("invalid", [
        b"\xff", b"\xfe\xff", b"\x80", b"abc\x80def", b"\xc3", b"caf\xc3", b"\xc3(", b"\xe2\x82",
        b"\xe2\x82\xac\xe2\x82", b"\xf0\x9f\x98", b"\xf0\x9f\x98 x", b"\xed\xa0\x80", b"\xed\xb0\x80",
        b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
        b"hello \xff world", b"\xe6\x97\xa5\xe6\x9c", b"\x80\x80\x80\x80", b"ok\xe2\x28\xa1ok",
        b"<|im_start|>\xff<|im_end|>", b"\xc3\xa9\xc3", b"12\xff34",
    ])

    # Deterministic random mixes: characters drawn from the categories above
    # (ASCII-heavy, so pre-tokenizer boundaries between classes are exercised).
    rng = random.Random(20240601)
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 4 + list("0123456789") * 3 +
            list(" " * 20 + "\t\n\r") + list(".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`") +
            list("éüßçñøåœ") + list("你好世界日本語") + list("😀👍🏽🇺🇸") + list("مرحباשלוםनमस्ते") +
            ["\u0301", "\u00a0", "\u3000", "\u200d", "'s", "'ll", "<|im_end|>", "<s>"])
    for n in range(50):
        k = rng.randint(1, 80)
        add("random", ["".join(rng.choice(pool) for _ in range(k))])
    rng_bytes = random.Random(7)
    for n in range(10):
        k = rng_bytes.randint(1, 40)
        add("random-bytes", [bytes(rng_bytes.randrange(256) for _ in range(k))])
    return out


# ---------------------------------------------------------------- helpers
def enc_field(d, key, b):
    """Store bytes b under key (readable) or key_hex (when not clean UTF-8)."""
    try:
        s = b.decode("utf-8")
        if "\x00" in s:
            raise ValueError
        d[key] = s
    except (UnicodeDecodeError, ValueError):
        d[key + "_hex"] = b.hex()


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print("wrote %s (%d rows, %d bytes)" % (os.path.relpath(path, ROOT), len(rows), os.path.getsize(path)))


def split_special(b, specials):
    """Leftmost-longest split of bytes b on the special strings: [(is_special, bytes)]."""
    out, i, start = [], 0, 0
    specials = sorted(specials, key=len, reverse=True)
    while i < len(b):
        m = next((s for s in specials if b.startswith(s, i)), None)
        if m is None:
            i += 1
            continue
        if i > start:
            out.append((False, b[start:i]))
        out.append((True, m))
        i += len(m)
        start = i
    if start < len(b):
        out.append((False, b[start:]))
    return out


# ---------------------------------------------------------------- sentencepiece
def gen_spm(items):
    import sentencepiece as spm
    os.makedirs(os.path.dirname(SPM_MODEL), exist_ok=True)
    if not os.path.exists(SPM_MODEL):
        shutil.copyfile(SPM_SRC, SPM_MODEL)
    sp = spm.SentencePieceProcessor(model_file=SPM_MODEL)
    specials = [sp.id_to_piece(i).encode() for i in range(sp.get_piece_size())
                if sp.is_control(i) or sp.is_unknown(i)]
    rows = []
    for i, (cat, b) in enumerate(items):
        ids = sp.encode(b)
        ids_sp = []
        for is_sp, seg in split_special(b, specials):
            ids_sp += [sp.piece_to_id(seg.decode())] if is_sp else sp.encode(seg)
        r = {"i": i, "ids": ids, "ids_special": ids_sp}
        enc_field(r, "dec", sp.decode(ids).encode("utf-8"))
        enc_field(r, "dec_special", sp.decode(ids_sp).encode("utf-8"))
        rows.append(r)
    write_jsonl(os.path.join(FIX, "llama2.jsonl"), rows)


# ---------------------------------------------------------------- HF byte-level BPE
def gen_hf(items):
    from transformers import AutoTokenizer
    from tokenizers import Tokenizer, pre_tokenizers, processors, Regex

    hf = AutoTokenizer.from_pretrained(os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF))
    j = json.loads(hf.backend_tokenizer.to_str())
    conv = Tokenizer.from_str(json.dumps(j))       # transformers' conversion as-is (plain ByteLevel)

    tok = Tokenizer.from_str(json.dumps(j))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    out_json = os.path.join(FIX, "smollm2-tokenizer.json")
    with open(out_json, "w", encoding="utf-8") as f:
        f.write(json.dumps(json.loads(tok.to_str()), ensure_ascii=False, separators=(",", ":")))
    print("wrote %s (%d bytes)" % (os.path.relpath(out_json, ROOT), os.path.getsize(out_json)))
    cfg = {"add_bos_token": False, "add_eos_token": False,
           "bos_token": hf.bos_token, "eos_token": hf.eos_token,
           "pad_token": hf.pad_token, "unk_token": hf.unk_token,
           "model_max_length": 8192, "tokenizer_class": "GPT2Tokenizer"}
    with open(os.path.join(FIX, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")

    def variant(pre, ignore_merges):
        v = json.loads(json.dumps(j))
        v["pre_tokenizer"] = pre
        v["model"]["ignore_merges"] = ignore_merges
        return Tokenizer.from_str(json.dumps(v))

    split = lambda rx: {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False}
    bl_norx = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    llama3 = variant({"type": "Sequence", "pretokenizers": [split(LLAMA3_RE), bl_norx]}, True)
    qwen2 = variant({"type": "Sequence", "pretokenizers": [split(QWEN2_RE), bl_norx]}, False)

    rows, vrows, ndiff = [], [], 0
    for i, (cat, b) in enumerate(items):
        s = b.decode("utf-8", errors="replace")
        tok.encode_special_tokens = False
        ids = tok.encode(s, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        ids_plain = tok.encode(s, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        r = {"i": i, "ids": ids, "ids_plain": ids_plain}
        enc_field(r, "dec", tok.decode(ids, skip_special_tokens=False).encode("utf-8"))
        enc_field(r, "dec_skip", tok.decode(ids, skip_special_tokens=True).encode("utf-8"))
        rows.append(r)
        gpt2_ids = conv.encode(s, add_special_tokens=False).ids
        ndiff += gpt2_ids != ids
        vrows.append({"i": i, "gpt2": gpt2_ids,
                      "llama3": llama3.encode(s, add_special_tokens=False).ids,
                      "qwen2": qwen2.encode(s, add_special_tokens=False).ids})
    write_jsonl(os.path.join(FIX, "smollm2.jsonl"), rows)
    write_jsonl(os.path.join(FIX, "bpe-variants.jsonl"), vrows)
    print("transformers' GGUF conversion (ByteLevel only) differs from Digits+ByteLevel on %d of %d strings"
          % (ndiff, len(items)))


def main():
    items = corpus()
    os.makedirs(FIX, exist_ok=True)
    rows = []
    for i, (cat, b) in enumerate(items):
        r = {"i": i, "cat": cat}
        enc_field(r, "text", b)
        rows.append(r)
    write_jsonl(os.path.join(FIX, "corpus.jsonl"), rows)
    gen_spm(items)
    if os.path.exists(GGUF):
        gen_hf(items)
    else:
        print("default model not found at %s: HF goldens not regenerated" % GGUF, file=sys.stderr)


if __name__ == "__main__":
    main()

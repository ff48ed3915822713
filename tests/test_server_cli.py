"""`peregrine serve` options: --help from the options table, bad flags,
--config JSON with the command line winning, --alias, --log-format json
(one JSON log line per request), and an unknown --chat-template family."""
import json
import os
import re
import subprocess
import tempfile

from peregrine_server import BIN, MODEL, Server


def test_help_and_bad_options():
    p = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0
    for opt in ["--model", "--host", "--port", "--api-key", "--max-queue", "--max-body", "--timeout",
                "--chat-template", "--log-format", "--device", "--threads", "--max-seq-len", "--config"]:
        assert opt in p.stdout, opt
    assert "(default: 127.0.0.1)" in p.stdout and "(default: 8080)" in p.stdout
    for bad in (["--port", "70000"], ["--max-queue", "x"], ["--log-format", "xml"], ["--nope", "1"], ["stray"]):
        p = subprocess.run([BIN, "serve", *bad], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "peregrine serve:" in p.stderr, (bad, p.stderr)


def test_config_file_alias_and_json_logs():
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"alias": "from-config", "max_queue": 7, "log-format": "text"}, f)
    try:
        s = Server("--config", f.name, "--alias", "smol", "--log-format", "json")
        try:
            assert s.model == "smol"  # the command line wins over the file
            status, r = s.post_json("/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2})
            assert status == 200 and r["model"] == "smol"
            assert s.stop() == 0  # the request's log line is written after its answer: read once stopped
            log = s.read_log()
            assert "max-queue=7" in log  # the effective configuration dump
            lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
            req = [x for x in lines if "route=/v1/completions status=200" in x["msg"]]
            assert len(req) == 1 and "generated_tokens=2" in req[0]["msg"] and req[0]["level"] == "info"
        finally:
            assert s.stop() == 0
            s.cleanup()
    finally:
        os.unlink(f.name)


def test_forced_chat_template():
    s = Server("--chat-template", "zephyr")
    try:
        status, r = s.post_json("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                         "max_tokens": 2})
        assert status == 200
        # the zephyr rendering with this model's EOS text (<|im_end|>), tokenized as the server does
        _, t = s.post_json("/tokenize", {"content": "<|user|>\nHi<|im_end|>\n<|assistant|>\n"})
        assert r["usage"]["prompt_tokens"] == len(t["tokens"])
        assert "chat template zephyr" in s.read_log()
    finally:
        assert s.stop() == 0
        s.cleanup()


def test_quantized_formats_compose_with_serve():
    """--quant and --kv-cache reach the engine behind `serve`: for each pair,
    a greedy /v1/completions answer equals `peregrine generate` with the same
    options (the same engine, so the same tokens), and the start-up log line
    of the engine names the weight and KV formats. On this prompt int8 weights
    + int8 KV give the stored weights' 12 tokens (only the log tells them
    apart), while int4 g64 changes the text, which the test also requires, so
    a server that ignored the option could not pass."""
    prompt, n = "The capital of France is", 12

    def generate(*opts):
        p = subprocess.run([BIN, "generate", "--model", MODEL, "--device", "cpu", "--threads", "2", "-p", prompt,
                            "-n", str(n), "--ignore-eos", "--temperature", "0", *opts],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stdout.rstrip("\n")

    stored = generate()
    for opts, wfmt in ((["--quant", "int8", "--kv-cache", "int8"], "int8"),
                       (["--quant", "int4", "--group-size", "64", "--kv-cache", "bf16"], "int4 g64")):
        want = generate(*opts)
        if wfmt.startswith("int4"):
            assert want != stored, (want, stored)
        s = Server("--device", "cpu", "--threads", "2", *opts)
        try:
            status, r = s.post_json("/v1/completions", {"prompt": prompt, "max_tokens": n, "temperature": 0,
                                                        "ignore_eos": True})
            assert status == 200, r
            assert r["usage"]["completion_tokens"] == n
            assert r["choices"][0]["text"].rstrip("\n") == want, (opts, r["choices"][0]["text"], want)
            log = s.read_log()
        finally:
            assert s.stop() == 0
        # the default model's LM head is its Q8_0 embedding: auto keeps it as stored
        line = r"serve: engine on cpu[^\n]*: weights %s, LM head as stored \([^\n]*KV cache %s " % (wfmt, opts[-1])
        assert re.search(line, log), log

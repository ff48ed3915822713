"""The OpenAI-compatible API of `peregrine serve`, driven by real clients:
curl against every endpoint (streamed and not) and the official openai
package (chat, completions, streaming, stop strings, logprobs, seeds, n > 1,
errors as the right exception classes), 16 concurrent clients, and
cancellation when a client disconnects mid-stream."""
import json
import shutil
import socket
import subprocess
import threading
import time

import openai
import pytest

from peregrine_server import Server, sse_events

PROMPTS = ["The capital of France is", "One, two, three,", "Water boils at", "My favourite colour is"]


@pytest.fixture(scope="module")
def srv():
    s = Server()
    yield s
    assert s.stop() == 0
    s.cleanup()


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def curl(*args):
    assert shutil.which("curl"), "curl is needed"
    p = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, timeout=120)
    body, _, code = p.stdout.rpartition(b"\n")
    return int(code), body


# ---------------------------------------------------------------- curl
def test_curl_health_models_metrics_page(srv):
    code, body = curl(srv.url + "/health")
    assert code == 200 and json.loads(body) == {"status": "ok"}
    code, body = curl(srv.url + "/v1/models")
    models = json.loads(body)
    assert code == 200 and models["object"] == "list"
    assert models["data"][0]["id"] == srv.model and models["data"][0]["object"] == "model"
    code, body = curl(srv.url + "/v1/models/" + srv.model)
    assert code == 200 and json.loads(body)["id"] == srv.model
    code, body = curl(srv.url + "/metrics")
    assert code == 200
    text = body.decode()
    for name in ["peregrine_requests_total", "peregrine_prompt_tokens_total", "peregrine_generation_tokens_total",
                 "peregrine_time_to_first_token_seconds_bucket", "peregrine_inter_token_latency_seconds_bucket",
                 "peregrine_requests_running", "peregrine_requests_queued", "peregrine_decode_tokens_per_second"]:
        assert name in text, name
    code, body = curl(srv.url + "/")
    assert code == 200 and b"<html" in body and b"/v1/chat/completions" in body


def test_curl_chat_and_completions_not_streamed(srv):
    code, body = curl(srv.url + "/v1/chat/completions", "-H", "Content-Type: application/json", "-d",
                      json.dumps({"model": srv.model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                                  "max_tokens": 12, "temperature": 0}))
    assert code == 200
    r = json.loads(body)
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-") and r["model"] == srv.model
    ch = r["choices"][0]
    assert ch["index"] == 0 and ch["message"]["role"] == "assistant"
    assert "Paris" in ch["message"]["content"]
    assert ch["finish_reason"] in ("stop", "length")
    u = r["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] <= 12
    t = r["timings"]
    assert t["prompt_n"] == u["prompt_tokens"] and t["predicted_n"] == u["completion_tokens"]
    assert t["prompt_ms"] > 0 and t["predicted_per_second"] > 0

    code, body = curl(srv.url + "/v1/completions", "-d",
                      json.dumps({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}))
    assert code == 200
    r = json.loads(body)
    assert r["object"] == "text_completion" and r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 4 and "Paris" in r["choices"][0]["text"]


def test_curl_streams(srv):
    code, body = curl("-N", srv.url + "/v1/chat/completions", "-d",
                      json.dumps({"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 6,
                                  "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}))
    assert code == 200
    ev = sse_events(body)
    assert ev[-1] == "[DONE]"
    assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in ev[:-1])
    finish = [e for e in ev[:-1] if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finish) == 1
    usage = ev[-2]
    assert usage["choices"] == [] and 1 <= usage["usage"]["completion_tokens"] <= 6
    assert "timings" in usage and usage["timings"]["predicted_n"] == usage["usage"]["completion_tokens"]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in ev[:-1] if e["choices"])
    # the streamed text equals the non-streamed answer for the same greedy request
    status, full = srv.post_json("/v1/chat/completions", {"messages": [{"role": "user", "content": "Say hi"}],
                                                          "max_tokens": 6, "temperature": 0})
    assert status == 200 and full["choices"][0]["message"]["content"] == text

    code, body = curl("-N", srv.url + "/v1/completions", "-d",
                      json.dumps({"prompt": "One, two,", "max_tokens": 5, "temperature": 0, "stream": True}))
    ev = sse_events(body)
    assert code == 200 and ev[-1] == "[DONE]" and ev[-2]["choices"][0]["finish_reason"] == "length"
    assert "timings" in ev[-2]  # the last chunk carries the timings
    assert "three" in "".join(e["choices"][0]["text"] for e in ev[:-1])


def test_tokenize_detokenize(srv):
    status, r = srv.post_json("/tokenize", {"content": "Hello world"})
    assert status == 200 and r["tokens"] == [19556, 905]  # HF tokenizers' ids for SmolLM2
    status, r2 = srv.post_json("/tokenize", {"content": "Hello world", "with_pieces": True})
    assert [t["piece"] for t in r2["tokens"]] == ["Hello", " world"]
    status, d = srv.post_json("/detokenize", {"tokens": r["tokens"]})
    assert status == 200 and d["content"] == "Hello world"
    status, d = srv.post_json("/tokenize", {"content": "<|im_start|>", "parse_special": True})
    assert d["tokens"] == [1]


# ---------------------------------------------------------------- openai client
def test_openai_chat_and_completion(client, srv):
    r = client.chat.completions.create(model=srv.model, messages=[
        {"role": "user", "content": "What is the capital of France?"}], max_tokens=16, temperature=0)
    assert "Paris" in r.choices[0].message.content
    r = client.chat.completions.create(model=srv.model, messages=[
        {"role": "system", "content": "You are a geography expert."},
        {"role": "user", "content": [{"type": "text", "text": "Name a river."}]}], max_tokens=4, temperature=0)
    assert r.choices[0].message.content and r.usage.completion_tokens <= 4
    assert r.usage.completion_tokens >= 1
    c = client.completions.create(model=srv.model, prompt="The capital of France is", max_tokens=3, temperature=0)
    assert c.choices[0].text.strip().startswith("Paris")
    e = client.completions.create(model=srv.model, prompt="The capital of France is", max_tokens=3, temperature=0,
                                  echo=True)
    assert e.choices[0].text == "The capital of France is" + c.choices[0].text


def test_openai_streaming(client, srv):
    chunks = list(client.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "Count to five."}],
                                                 max_tokens=10, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text and chunks[-1].usage.completion_tokens == 10
    assert chunks[0].choices[0].delta.role == "assistant"
    full = client.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "Count to five."}],
                                          max_tokens=10, temperature=0)
    assert full.choices[0].message.content == text
    parts = [c.choices[0].text for c in client.completions.create(model=srv.model, prompt="Water boils at",
                                                                  max_tokens=6, temperature=0, stream=True)]
    once = client.completions.create(model=srv.model, prompt="Water boils at", max_tokens=6, temperature=0)
    assert "".join(parts) == once.choices[0].text


def test_openai_stop_strings(client, srv):
    base = client.completions.create(model=srv.model, prompt="One, two, three,", max_tokens=12, temperature=0)
    text = base.choices[0].text
    assert "five" in text, text
    # a stop string inside the text: the output ends right before it, never includes it
    r = client.completions.create(model=srv.model, prompt="One, two, three,", max_tokens=12, temperature=0, stop=["ive"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[:text.index("ive")]
    s = list(client.completions.create(model=srv.model, prompt="One, two, three,", max_tokens=12, temperature=0,
                                       stop=["ive", "zzz"], stream=True))
    assert "".join(c.choices[0].text for c in s) == text[:text.index("ive")]
    assert s[-1].choices[0].finish_reason == "stop"


def test_openai_logprobs(client, srv):
    r = client.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) >= 1
    text = r.choices[0].message.content
    assert "".join(t.token for t in content).startswith(text[:1])
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
    c = client.completions.create(model=srv.model, prompt="The capital of France is", max_tokens=2, temperature=0,
                                  logprobs=2)
    lp = c.choices[0].logprobs
    assert lp.tokens[0] == " Paris" and len(lp.top_logprobs[0]) == 2 and lp.text_offset[0] == 0
    assert lp.token_logprobs[0] == pytest.approx(max(lp.top_logprobs[0].values()))


def test_openai_seed_reproducible_and_n(client, srv):
    kw = dict(model=srv.model, prompt="Once upon a time", max_tokens=8, temperature=0.9, top_p=0.95)
    a = client.completions.create(seed=1234, **kw)
    b = client.completions.create(seed=1234, **kw)
    assert a.choices[0].text == b.choices[0].text
    n = client.completions.create(seed=1234, n=3, **kw)
    assert [c.index for c in n.choices] == [0, 1, 2]
    assert n.choices[0].text == a.choices[0].text  # choice 0 uses the request's seed
    assert n.usage.prompt_tokens == a.usage.prompt_tokens  # the prompt counts once
    assert n.usage.completion_tokens <= 3 * 8
    chat = client.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "Hi"}], n=2,
                                          max_tokens=3, temperature=0)
    assert len(chat.choices) == 2 and chat.choices[0].message.content == chat.choices[1].message.content


def test_openai_errors_are_the_right_exceptions(client, srv):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=srv.model, messages=[], max_tokens=4)
    assert e.value.status_code == 400 and "messages" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=srv.model, prompt="x", max_tokens=100000)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=srv.model, prompt="x", temperature=5)
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    assert client.models.retrieve(srv.model).id == srv.model
    assert [m.id for m in client.models.list()] == [srv.model]


# ---------------------------------------------------------------- concurrency
def test_16_concurrent_clients_get_complete_correct_answers(srv):
    ref = {}
    for p in PROMPTS:
        status, r = srv.post_json("/v1/completions", {"prompt": p, "max_tokens": 8, "temperature": 0})
        assert status == 200
        ref[p] = r["choices"][0]["text"]
    results, errors = [None] * 16, []

    def worker(i):
        try:
            c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=300)
            p = PROMPTS[i % len(PROMPTS)]
            if i % 2:
                s = c.completions.create(model=srv.model, prompt=p, max_tokens=8, temperature=0, stream=True)
                results[i] = (p, "".join(ch.choices[0].text for ch in s))
            else:
                r = c.completions.create(model=srv.model, prompt=p, max_tokens=8, temperature=0)
                results[i] = (p, r.choices[0].text)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for p, text in results:
        assert text == ref[p]
    m = srv.metrics()
    assert m["peregrine_requests_running"] == 0 and m["peregrine_requests_queued"] == 0
    assert srv.healthy()


def test_client_disconnect_cancels_the_request(srv):
    before = srv.metrics()
    body = json.dumps({"prompt": "Write a long story about a falcon.", "max_tokens": 400, "temperature": 0,
                       "ignore_eos": True, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(4096)
    s.close()
    deadline = time.time() + 30
    while time.time() < deadline:  # the engine and the HTTP side each count it, in either order
        m = srv.metrics()
        if (m["peregrine_requests_cancelled_total"] > before["peregrine_requests_cancelled_total"]
                and any('status="499"' in k for k in m)):
            break
        time.sleep(0.1)
    assert m["peregrine_requests_cancelled_total"] == before["peregrine_requests_cancelled_total"] + 1
    assert m["peregrine_requests_running"] == 0
    generated = m["peregrine_generation_tokens_total"] - before["peregrine_generation_tokens_total"]
    assert generated < 100, generated  # stopped long before max_tokens
    assert any(k.startswith("peregrine_requests_total") and 'status="499"' in k for k in m)
    status, r = srv.post_json("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert status == 200  # the slot was freed


def test_min_tokens_ignore_eos_and_streamed_choices(client, srv):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model=srv.model, messages=msgs, max_tokens=30, temperature=0)
    assert r.choices[0].finish_reason == "stop"  # the model ends with EOS by itself
    n = r.usage.completion_tokens
    m = client.chat.completions.create(model=srv.model, messages=msgs, max_tokens=30, temperature=0,
                                       extra_body={"min_tokens": n + 3})
    assert m.usage.completion_tokens >= n + 3
    assert m.choices[0].message.content.startswith(r.choices[0].message.content)
    i = client.chat.completions.create(model=srv.model, messages=msgs, max_tokens=n + 4, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert i.usage.completion_tokens == n + 4 and i.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=srv.model, prompt="Hello", max_tokens=3, n=2, temperature=0,
                                            stream=True))
    texts = {0: "", 1: ""}
    finishes = {}
    for ch in chunks:
        c = ch.choices[0]
        texts[c.index] += c.text
        if c.finish_reason:
            finishes[c.index] = c.finish_reason
    assert finishes == {0: "length", 1: "length"} and texts[0] == texts[1] and texts[0]

"""Bad input never hurts: 40+ malformed, wrong, oversized or half-sent
requests, each answered with the right status and an OpenAI error object,
while the server stays healthy (GET /health and a normal request after each).
Also: API keys, the queue limit (429), a half-sent body timing out without
holding the engine, and graceful shutdown."""
import json
import signal
import socket
import threading
import time

import openai
import pytest

from peregrine_server import Server, sse_events

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
U = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def srv():
    s = Server("--max-body", "1M", "--conn-timeout", "3")
    yield s
    assert s.stop() == 0
    s.cleanup()


def raw(port, data, read_timeout=10):
    """Send raw bytes, return (status or None, body bytes)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(read_timeout)
    try:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may answer (and close) before reading everything
        got = b""
        while True:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            got += b
            if b"\r\n\r\n" in got:
                head, _, body = got.partition(b"\r\n\r\n")
                cl = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if cl and len(body) >= int(cl[0].split(b":")[1]):
                    break
        status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/") else None
        return status, got.partition(b"\r\n\r\n")[2]
    finally:
        s.close()


def post(path, body, ctype="application/json"):
    b = body if isinstance(body, bytes) else body.encode()
    return (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (path.encode(), ctype.encode(), len(b))) + b


def j(**kw):
    return json.dumps(kw)


# (name, raw request bytes, expected status, field the error must name or None)
BAD = [
    ("empty body", post(COMP, ""), 400, None),
    ("truncated json", post(COMP, '{"prompt": "Hi", "max_tokens": 4'), 400, None),
    ("truncated string", post(COMP, '{"prompt": "Hi'), 400, None),
    ("trailing garbage", post(COMP, '{"prompt": "Hi"} x'), 400, None),
    ("not an object", post(COMP, '[1, 2, 3]'), 400, None),
    ("a bare string", post(COMP, '"hello"'), 400, None),
    ("single quotes", post(COMP, "{'prompt': 'Hi'}"), 400, None),
    ("invalid utf-8", post(COMP, b'{"prompt": "\xff\xfe"}'), 400, None),
    ("utf-8 surrogate", post(COMP, b'{"prompt": "\xed\xa0\x80"}'), 400, None),
    ("lone surrogate escape", post(COMP, '{"prompt": "\\ud800"}'), 400, None),
    ("missing prompt", post(COMP, j(max_tokens=4)), 400, "prompt"),
    ("prompt wrong type", post(COMP, j(prompt=5)), 400, "prompt"),
    ("prompt empty list", post(COMP, j(prompt=[])), 400, "prompt"),
    ("token id out of range", post(COMP, j(prompt=[1, 10 ** 7])), 400, "prompt"),
    ("negative token id", post(COMP, j(prompt=[-1])), 400, "prompt"),
    ("empty prompt", post(COMP, j(prompt="")), 400, "prompt"),
    ("negative max_tokens", post(COMP, j(prompt="Hi", max_tokens=-5)), 400, "max_tokens"),
    ("zero max_tokens", post(COMP, j(prompt="Hi", max_tokens=0)), 400, "max_tokens"),
    ("huge max_tokens", post(COMP, j(prompt="Hi", max_tokens=10 ** 9)), 400, "max_tokens"),
    ("fractional max_tokens", post(COMP, j(prompt="Hi", max_tokens=2.5)), 400, "max_tokens"),
    ("string max_tokens", post(COMP, j(prompt="Hi", max_tokens="4")), 400, "max_tokens"),
    ("temperature too high", post(COMP, j(prompt="Hi", temperature=9)), 400, "temperature"),
    ("temperature wrong type", post(COMP, j(prompt="Hi", temperature="hot")), 400, "temperature"),
    ("top_p zero", post(COMP, j(prompt="Hi", top_p=0)), 400, "top_p"),
    ("top_k wrong type", post(COMP, j(prompt="Hi", top_k=[1])), 400, "top_k"),
    ("n zero", post(COMP, j(prompt="Hi", n=0)), 400, "n"),
    ("n huge", post(COMP, j(prompt="Hi", n=10 ** 6)), 400, "n"),
    ("five stop strings", post(COMP, j(prompt="Hi", stop=["a", "b", "c", "d", "e"])), 400, "stop"),
    ("stop wrong type", post(COMP, j(prompt="Hi", stop={"a": 1})), 400, "stop"),
    ("logit_bias bad key", post(COMP, j(prompt="Hi", logit_bias={"x": 1})), 400, "logit_bias"),
    ("logit_bias out of range", post(COMP, j(prompt="Hi", logit_bias={"5": 101})), 400, "logit_bias"),
    ("logprobs too many", post(COMP, j(prompt="Hi", logprobs=50)), 400, "logprobs"),
    ("stream wrong type", post(COMP, j(prompt="Hi", stream="yes")), 400, "stream"),
    ("stream_options without stream", post(COMP, j(prompt="Hi", stream_options={"include_usage": True})), 400,
     "stream_options"),
    ("echo with logprobs", post(COMP, j(prompt="Hi", echo=True, logprobs=1)), 400, "echo"),
    ("min_tokens over max_tokens", post(COMP, j(prompt="Hi", max_tokens=2, min_tokens=3)), 400, "min_tokens"),
    ("empty messages", post(CHAT, j(messages=[])), 400, "messages"),
    ("messages not a list", post(CHAT, j(messages={"role": "user"})), 400, "messages"),
    ("message not an object", post(CHAT, j(messages=["Hi"])), 400, "messages[0]"),
    ("unknown role", post(CHAT, j(messages=[{"role": "wizard", "content": "Hi"}])), 400, "messages[0].role"),
    ("missing role", post(CHAT, j(messages=[{"content": "Hi"}])), 400, "messages[0].role"),
    ("missing content", post(CHAT, j(messages=[{"role": "user"}])), 400, "messages[0].content"),
    ("content wrong type", post(CHAT, j(messages=[{"role": "user", "content": 7}])), 400, "messages[0].content"),
    ("image part", post(CHAT, j(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])),
     400, "messages[0].content"),
    ("top_logprobs without logprobs", post(CHAT, j(messages=U, top_logprobs=2)), 400, "top_logprobs"),
    ("chat logprobs not bool", post(CHAT, j(messages=U, logprobs=3)), 400, "logprobs"),
    ("chat over the context", post(CHAT, j(messages=[{"role": "user", "content": "word " * 5000}], max_tokens=4)), 400,
     "max_tokens"),
    ("unknown model", post(COMP, j(prompt="Hi", model="gpt-9")), 404, "model"),
    ("unknown route", post("/v1/nothing", j(prompt="Hi")), 404, None),
    ("wrong method", b"DELETE /v1/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 405, None),
    ("GET on a POST route", b"GET /v1/chat/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 405, None),
    ("POST on a GET route", post("/v1/models", "{}"), 405, None),
    ("body over the limit", post(COMP, '{"prompt": "' + "a" * (2 << 20) + '"}'), 413, None),
    ("tokenize wrong type", post("/tokenize", j(content=5)), 400, "content"),
    ("detokenize bad id", post("/detokenize", j(tokens=[1, -4])), 400, "tokens"),
    ("detokenize not a list", post("/detokenize", j(tokens="1 2")), 400, "tokens"),
]


def normal_request_ok(srv):
    status, r = srv.post_json(COMP, {"prompt": "Hi", "max_tokens": 1, "temperature": 0})
    return status == 200 and r["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize("name,data,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_request(srv, name, data, status, param):
    got, body = raw(srv.port, data)
    assert got == status, (name, got, body[:300])
    if status != 405 or body:
        err = json.loads(body)["error"]
        assert err["message"] and err["type"]
        if param:
            assert err["param"] == param, err
    assert srv.healthy()
    assert normal_request_ok(srv)


def test_there_are_at_least_40_bad_requests():
    assert len(BAD) >= 40


def test_oversized_headers_and_chunked_oversized_body(srv):
    big = b"X-Big: " + b"b" * 200000 + b"\r\n"
    got, _ = raw(srv.port, b"GET /health HTTP/1.1\r\nHost: t\r\n" + big + b"Connection: close\r\n\r\n")
    assert got == 431
    chunk = b"a" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    got, resp = raw(srv.port, b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                              b"Connection: close\r\n\r\n" + body)
    assert got == 413 and "max-body" in json.loads(resp)["error"]["message"]
    assert srv.healthy() and normal_request_ok(srv)


def test_half_sent_body_times_out_without_holding_the_engine(srv):
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{\"prompt\": \"Hi\"")
    t0 = time.time()
    assert normal_request_ok(srv)  # the engine is free meanwhile
    s.settimeout(20)
    got = s.recv(4096)  # the server closes the idle connection (--conn-timeout 3)
    s.close()
    assert got == b"" or got.startswith(b"HTTP/1.1 4")
    assert time.time() - t0 < 15
    assert srv.healthy()


def test_openai_exception_classes_for_status_codes(srv):
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model=srv.model, prompt="Hi", max_tokens=-1)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=U, max_tokens=1)
    with pytest.raises(openai.APIStatusError) as e:
        c.completions.create(model=srv.model, prompt="a" * (2 << 20), max_tokens=1)
    assert e.value.status_code == 413


def test_api_key():
    s = Server(env={"PEREGRINE_API_KEY": "sekrit"})
    try:
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model=s.model, prompt="Hi", max_tokens=1)
        status, body, headers = s.request("POST", COMP, {"prompt": "Hi", "max_tokens": 1})
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        assert headers.get("WWW-Authenticate") == "Bearer"
        status, _, _ = s.request("GET", "/v1/models")
        assert status == 401
        assert s.healthy()  # /health needs no key
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="sekrit", max_retries=0)
        assert good.completions.create(model=s.model, prompt="Hi", max_tokens=1).usage.completion_tokens == 1
    finally:
        assert s.stop() == 0
        s.cleanup()


def stream_in_thread(srv, body, out):
    def run():
        status, data, _ = srv.request("POST", COMP, body, timeout=120)
        out.append((status, data))
    t = threading.Thread(target=run)
    t.start()
    return t


def wait_metric(srv, name, value, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if srv.metrics()[name] >= value:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} did not reach {value}")


def test_queue_full_is_429():
    s = Server("--max-queue", "1")
    try:
        long = {"prompt": "Tell me a story.", "max_tokens": 200, "ignore_eos": True, "stream": True}
        out = []
        t1 = stream_in_thread(s, long, out)
        wait_metric(s, "peregrine_requests_running", 1)
        t2 = stream_in_thread(s, long, out)
        wait_metric(s, "peregrine_requests_queued", 1)
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            c.completions.create(model=s.model, prompt="Hi", max_tokens=1)
        t1.join(120)
        t2.join(120)
        assert [st for st, _ in out] == [200, 200]
        assert all(sse_events(d)[-1] == "[DONE]" for _, d in out)
    finally:
        assert s.stop() == 0
        s.cleanup()


def test_graceful_shutdown_finishes_running_requests():
    s = Server("--grace", "60")
    try:
        out = []
        t = stream_in_thread(s, {"prompt": "Tell me a story.", "max_tokens": 24, "ignore_eos": True,
                                 "temperature": 0, "stream": True}, out)
        wait_metric(s, "peregrine_requests_running", 1)
        s.proc.send_signal(signal.SIGTERM)
        t.join(120)
        assert s.proc.wait(timeout=60) == 0
        status, data = out[0]
        ev = sse_events(data)
        assert status == 200 and ev[-1] == "[DONE]"
        assert ev[-2]["choices"][0]["finish_reason"] == "length"
        assert len("".join(e["choices"][0]["text"] for e in ev[:-1])) > 0
        log = s.read_log()
        assert "SIGTERM received" in log and "serve: stopped" in log
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", s.port), timeout=2)
    finally:
        s.cleanup()


def test_shutdown_cancels_after_the_grace_period():
    s = Server("--grace", "0.5")
    try:
        out = []
        t = stream_in_thread(s, {"prompt": "Tell me a story.", "max_tokens": 2000, "ignore_eos": True,
                                 "stream": True}, out)
        wait_metric(s, "peregrine_requests_running", 1)
        t0 = time.time()
        s.proc.send_signal(signal.SIGINT)
        assert s.proc.wait(timeout=60) == 0
        assert time.time() - t0 < 30
        t.join(60)
        ev = sse_events(out[0][1])
        assert ev[-1] == "[DONE]" and "error" in ev[-2]  # told in-band that it was cancelled
    finally:
        s.cleanup()


def test_per_request_time_limit():
    s = Server("--timeout", "1")
    try:
        t0 = time.time()
        status, r = s.post_json(COMP, {"prompt": "Tell me a story.", "max_tokens": 3000, "ignore_eos": True})
        assert status == 200 and r["choices"][0]["finish_reason"] == "length"
        assert 1 <= time.time() - t0 < 15 and 0 < r["usage"]["completion_tokens"] < 3000
        assert s.healthy()
    finally:
        assert s.stop() == 0
        s.cleanup()

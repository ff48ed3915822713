"""Start and stop a real `peregrine serve` for the integration tests.

The binary is $PEREGRINE_BIN (default build/peregrine). Each server listens on
a free loopback port chosen by the kernel (--port 0); the port is read from
the "ready on http://HOST:PORT" log line. Logs go to a file that tests may
read (one line per request).
"""
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("PEREGRINE_BIN", os.path.join(ROOT, "build", "peregrine"))
MODEL = os.path.join(os.environ.get("PEREGRINE_CACHE", os.path.expanduser("~/.cache/peregrine")),
                     "SmolLM2-135M-Instruct.Q4_1.gguf")


class Server:
    def __init__(self, *args, env=None, start_timeout=120):
        self.log = tempfile.NamedTemporaryFile(prefix="peregrine-serve-", suffix=".log", delete=False)
        e = dict(os.environ)
        e.pop("PEREGRINE_API_KEY", None)
        if env:
            e.update(env)
        self.proc = subprocess.Popen([BIN, "serve", "--model", MODEL, "--port", "0", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=e)
        deadline = time.time() + start_timeout
        self.port = None
        while time.time() < deadline:
            m = re.search(r"ready on http://127\.0\.0\.1:(\d+)", self.read_log())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during start-up:\n" + self.read_log())
            time.sleep(0.05)
        if self.port is None:
            self.stop()
            raise RuntimeError("server did not become ready:\n" + self.read_log())
        self.url = f"http://127.0.0.1:{self.port}"
        key = (env or {}).get("PEREGRINE_API_KEY")
        auth = {"Authorization": "Bearer " + key} if key else {}
        status, body, _ = self.request("GET", "/v1/models", headers=auth)
        assert status == 200, (status, body)
        self.model = json.loads(body)["data"][0]["id"]

    def read_log(self):
        with open(self.log.name, "r", errors="replace") as f:
            return f.read()

    def request(self, method, path, body=None, headers=None, timeout=120):
        data = None
        h = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def get_json(self, path):
        status, body, _ = self.request("GET", path)
        assert status == 200, (status, body)
        return json.loads(body)

    def post_json(self, path, body, headers=None):
        status, data, _ = self.request("POST", path, body, headers)
        return status, json.loads(data) if data else None

    def healthy(self):
        status, body, _ = self.request("GET", "/health", timeout=10)
        return status == 200 and json.loads(body)["status"] == "ok"

    def metrics(self):
        status, body, _ = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def cleanup(self):
        self.stop()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def sse_events(raw):
    """Split an SSE body into the JSON payloads of its data: lines (and the final [DONE])."""
    out = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out

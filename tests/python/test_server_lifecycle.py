"""ts-server's life cycle: a bounded queue (503 beyond it; a client that gives up leaves it),
SIGTERM (stops accepting, finishes the requests in flight, exits 0), start-up errors with a
message (a missing web dependency, a context or slots that do not fit in memory, a missing
model, bad flags)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict

import httpx
import psutil
import pytest

from server_harness import ServerProcess

LONG_PROMPT = "1, 2, 3, 4, 5,"  # greedy continuation runs to max_tokens on the bundled model


def wait_for(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_queue_full_is_503_and_sigterm_finishes_in_flight_requests():
    s = ServerProcess(["--parallel", "1", "--max-queue", "1", "-c", "2048", "-t", "1"])
    try:
        results: Dict[str, Any] = {}

        def stream_a() -> None:
            body = {"prompt": LONG_PROMPT, "max_tokens": 2000, "temperature": 0, "stream": True}
            with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=120) as r:
                results["a_status"] = r.status_code
                results["a_data"] = [l[6:] for l in r.iter_lines() if l.startswith("data: ")]
            results["a_done_at"] = time.monotonic()

        def queued_b() -> None:
            body = {"prompt": LONG_PROMPT, "max_tokens": 20, "temperature": 0}
            results["b"] = httpx.post(s.url + "/v1/completions", json=body, timeout=120)

        a = threading.Thread(target=stream_a)
        a.start()
        wait_for(lambda: s.health()["slots_processing"] == 1, "request A to take the slot")

        # a client that gives up while waiting in the queue leaves it
        def impatient() -> None:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2},
                           timeout=httpx.Timeout(30, read=0.5))

        d = threading.Thread(target=impatient)
        d.start()
        wait_for(lambda: s.health()["queue_length"] == 1, "request D to wait in the queue")
        d.join(30)
        wait_for(lambda: s.health()["queue_length"] == 0, "request D to leave the queue", timeout=5)
        m = s.metrics()
        assert m.get('turbosparse_requests_total{endpoint="completions",outcome="cancelled"}') == 1, m
        assert s.health()["slots_processing"] == 1  # A still runs

        b = threading.Thread(target=queued_b)
        b.start()
        wait_for(lambda: s.health()["queue_length"] == 1, "request B to wait in the queue")

        c = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=60)
        assert c.status_code == 503, c.text
        err = c.json()["error"]
        assert err["code"] == "queue_full" and "queue" in err["message"] and "1 slots" in err["message"]
        assert c.headers.get("retry-after") == "1"

        t_term = time.monotonic()
        assert "a_done_at" not in results  # A is in flight when the signal comes
        s.proc.send_signal(15)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(s.url + "/health", timeout=5)
        rc = s.proc.wait(120)
        a.join(60)
        b.join(60)
        assert rc == 0, s.output()
        # A ran to its end after the signal, B (queued at the signal) was served too
        assert results["a_status"] == 200 and results["a_done_at"] > t_term
        data = results["a_data"]
        assert data[-1] == "[DONE]"
        assert json.loads(data[-2])["choices"][0]["finish_reason"] == "length"
        assert results["b"].status_code == 200
        assert results["b"].json()["usage"]["completion_tokens"] == 20
    finally:
        s.stop()


def run_server(*args: str, pre: str = "pass") -> subprocess.CompletedProcess:
    code = f"import sys; {pre}; from turbosparse.server.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "--port", "0", *args], capture_output=True, text=True,
                          timeout=120)


def test_missing_web_dependency_is_a_clear_message():
    r = run_server(pre="sys.modules['uvicorn'] = None")  # as if uvicorn were not installed
    assert r.returncode == 1
    assert "missing: uvicorn" in r.stderr and "pip install 'turbosparse[server]'" in r.stderr, r.stderr


def test_context_too_large_for_memory_is_an_error():
    n_ctx = 100_000_000
    if n_ctx * 6 * 2 * 256 * 2 <= psutil.virtual_memory().total:
        pytest.skip("this machine has the memory for that context")
    r = run_server("-c", str(n_ctx))
    assert r.returncode == 1
    assert "ts-server: error:" in r.stderr and "KV cache" in r.stderr and f"{n_ctx} tokens" in r.stderr, r.stderr


def test_slots_too_many_for_memory_is_an_error():
    n_ctx, n_slots = 20_000, 1000  # 123 MB of KV cache per slot: one fits, a thousand do not
    if n_slots * n_ctx * 6 * 2 * 256 * 2 <= psutil.virtual_memory().total:
        pytest.skip("this machine has the memory for those slots")
    r = run_server("-c", str(n_ctx), "--parallel", str(n_slots))
    assert r.returncode == 1
    assert f"{n_slots} slots need about" in r.stderr and f"for {n_ctx} tokens" in r.stderr, r.stderr


def test_missing_model_is_an_error(tmp_path):
    r = run_server("-m", str(tmp_path / "none.gguf"))
    assert r.returncode == 1 and "ts-server: error:" in r.stderr and "none.gguf" in r.stderr, r.stderr


def test_bad_flags_are_refused():
    for args in (["--parallel", "0"], ["-c", "0"], ["--port", "70000"], ["--ffn-mode", "fast"]):
        r = run_server(*args)
        assert r.returncode == 2 and "error:" in r.stderr, (args, r.stderr)


def test_console_script_and_module_help():
    exe = Path(sys.executable).parent / "ts-server"
    if not exe.exists():
        exe = Path(shutil.which("ts-server") or "ts-server")
    for cmd in ([str(exe), "--help"], [sys.executable, "-m", "turbosparse.server", "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        for flag in ("-m", "--host", "--port", "--parallel", "-c", "-t", "--ffn-mode", "--threshold", "--api-key",
                     "--alias"):
            assert flag in r.stdout, flag

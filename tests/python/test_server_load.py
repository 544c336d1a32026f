"""A bounded load test of ts-server: 160 mixed requests (completions and chat, streamed and not,
a quarter of the streams dropped by their client after two events) from 16 concurrent clients on
127.0.0.1. Every request completes or gets a clean error, the server stays up and idle after,
its counters add up, and its memory does not grow across the run."""
from __future__ import annotations

import concurrent.futures
import json
import random
import time
from typing import Tuple

import httpx

from server_harness import ServerProcess

N_REQUESTS = 160
N_CLIENTS = 16
PROMPTS = ["The Python interpreter", "Return a list of", "os.path.join(", "class A:\n    def", "1, 2, 3, 4, 5,",
           "a a a a a a", "The dict type"]
TIME_LIMIT_S = 300.0
LONG_PROMPT = "1, 2, 3, 4, 5,"  # greedy continuation runs to max_tokens on the bundled model


def one_request(url: str, i: int) -> Tuple[str, str]:
    """(kind, outcome): outcome "ok", "cancelled" or "503"; anything else fails the test."""
    rnd = random.Random(i)
    chat = rnd.random() < 0.5
    stream = rnd.random() < 0.6
    cancel = stream and rnd.random() < 0.25
    chat = chat and not cancel  # a chat reply may end its turn early; the completion below runs 400 tokens
    prompt = rnd.choice(PROMPTS)
    body = {"max_tokens": rnd.randint(4, 96), "temperature": rnd.choice([0, 0.7, 1.0]), "seed": i, "stream": stream}
    if cancel:  # a generation far longer than the client stays: the server must stop it
        prompt, body["max_tokens"], body["temperature"] = LONG_PROMPT, 400, 0
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    path = "/v1/chat/completions" if chat else "/v1/completions"
    kind = f"{'chat' if chat else 'completion'}{' stream' if stream else ''}{' cancel' if cancel else ''}"
    with httpx.Client(base_url=url, timeout=120) as c:
        if not stream:
            r = c.post(path, json=body)
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "queue_full"
                return kind, "503"
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["choices"][0]["finish_reason"] in ("stop", "length")
            assert out["usage"]["completion_tokens"] <= body["max_tokens"]
            return kind, "ok"
        with c.stream("POST", path, json=body) as r:
            if r.status_code == 503:
                return kind, "503"
            assert r.status_code == 200
            data = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    data.append(line[6:])
                    if cancel and len(data) == 2:
                        return kind, "cancelled"  # leaves the with: the connection is closed mid-stream
        assert data[-1] == "[DONE]", data[-3:]
        last = json.loads(data[-2])
        assert last["choices"][0]["finish_reason"] in ("stop", "length")
        return kind, "ok"


def run_batch(url: str, ids) -> list:
    with concurrent.futures.ThreadPoolExecutor(N_CLIENTS) as ex:
        return list(ex.map(lambda i: one_request(url, i), ids))


def test_mixed_load_from_16_clients():
    s = ServerProcess(["--parallel", "4", "--max-queue", "32", "-c", "512", "-t", "1"])
    try:
        t0 = time.monotonic()
        warm_up = run_batch(s.url, range(1000, 1040))  # allocator pools, imports, thread stacks
        rss_before = s.rss_bytes()
        results = run_batch(s.url, range(N_REQUESTS))
        elapsed = time.monotonic() - t0
        assert elapsed < TIME_LIMIT_S
        assert s.proc.poll() is None, s.output()
        outcomes = [o for _, o in results]
        # 16 clients never exceed 4 slots + 32 queued: no request is turned away
        assert outcomes.count("503") == 0
        n_cancelled = outcomes.count("cancelled")
        assert n_cancelled >= 10 and outcomes.count("ok") == N_REQUESTS - n_cancelled

        # every slot is freed (cancelled streams included) and nothing waits
        deadline = time.monotonic() + 30
        while s.health()["slots_processing"] or s.health()["queue_length"]:
            assert time.monotonic() < deadline, s.health()
            time.sleep(0.05)
        m = s.metrics()
        total = sum(v for k, v in m.items() if k.startswith("turbosparse_requests_total"))
        assert total == N_REQUESTS + 40
        cancelled = sum(v for k, v in m.items() if k.startswith("turbosparse_requests_total") and "cancelled" in k)
        # every dropped stream was stopped by the server (each would have run 400 tokens)
        assert cancelled == n_cancelled + [o for _, o in warm_up].count("cancelled")
        rss_after = s.rss_bytes()
        growth = rss_after - rss_before
        assert growth < 24 << 20, f"RSS grew by {growth >> 20} MiB over {N_REQUESTS} requests"
        # still serving
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200
    finally:
        s.stop()

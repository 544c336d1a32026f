"""ts-server driven as its users drive it: the official openai client for completions, chat and
streaming, raw HTTP (httpx) for the error cases; at temperature 0 the server gives the text the
library gives, and concurrent requests the text of sequential ones; a client leaving
mid-stream frees its slot long before the generation would have ended."""
from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import openai
import pytest

import turbosparse
from server_harness import ServerProcess

KEY = "test-key-123"
N_CTX = 1024
ALIAS = "tiny-docs"
# greedy continuations of these run to max_tokens on the bundled model (no end of text)
LONG_PROMPT = "1, 2, 3, 4, 5,"
PROMPTS = ["The Python interpreter", "Return a list of", "os.path.join(", "class A:\n    def", LONG_PROMPT,
           "a a a a a a"]
MESSAGES = [{"role": "system", "content": "You answer questions about Python."},
            {"role": "user", "content": "What does len() return?"}]


@pytest.fixture(scope="module")
def server():
    s = ServerProcess(["--parallel", "2", "-c", str(N_CTX), "-t", "1", "--max-queue", "16", "--alias", ALIAS], KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local():
    """The library itself, configured as one slot of the server."""
    with turbosparse.Model(n_ctx=N_CTX, n_threads=1) as m:
        yield m


def post(server, path, body, headers=None, raw=None):
    h = dict(server.headers if headers is None else headers)
    if raw is not None:
        return httpx.post(server.url + path, content=raw, headers={**h, "Content-Type": "application/json"},
                          timeout=120)
    return httpx.post(server.url + path, json=body, headers=h, timeout=120)


# ---- the openai client ---------------------------------------------------------------------

def test_models_and_health(server, client):
    ids = [m.id for m in client.models.list()]
    assert ids == [ALIAS]
    h = server.health()
    assert h["status"] == "ok" and h["slots_idle"] + h["slots_processing"] == 2


def test_completion_is_the_librarys_text(client, local):
    for prompt in PROMPTS[:3]:
        want = local.create_completion(prompt, max_tokens=24, temperature=0)
        got = client.completions.create(model=ALIAS, prompt=prompt, max_tokens=24, temperature=0)
        assert got.choices[0].text == want["choices"][0]["text"], prompt
        assert got.choices[0].finish_reason == want["choices"][0]["finish_reason"]
        assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"]
        assert got.usage.completion_tokens == want["usage"]["completion_tokens"]
        assert got.model == ALIAS and got.object == "text_completion"


def test_completion_length_and_stop(client):
    got = client.completions.create(model=ALIAS, prompt=LONG_PROMPT, max_tokens=7, temperature=0)
    assert got.choices[0].finish_reason == "length" and got.usage.completion_tokens == 7
    full = got.choices[0].text
    cut = full[3:6]
    stopped = client.completions.create(model=ALIAS, prompt=LONG_PROMPT, max_tokens=7, temperature=0, stop=[cut])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == full[:full.index(cut)]


def test_completion_stream_matches_whole(client):
    whole = client.completions.create(model=ALIAS, prompt=PROMPTS[3], max_tokens=20, temperature=0)
    chunks = list(client.completions.create(model=ALIAS, prompt=PROMPTS[3], max_tokens=20, temperature=0,
                                            stream=True))
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_chat_is_the_librarys_reply(client, local):
    want = local.create_chat_completion(MESSAGES, max_tokens=30, temperature=0)
    got = client.chat.completions.create(model=ALIAS, messages=MESSAGES, max_tokens=30, temperature=0)
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert got.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"] > 10  # the template's tokens are counted
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens


def test_chat_stream_with_usage(client):
    whole = client.chat.completions.create(model=ALIAS, messages=MESSAGES, max_tokens=30, temperature=0)
    chunks = list(client.chat.completions.create(model=ALIAS, messages=MESSAGES, max_tokens=30, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # OpenAI's usage chunk
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sse_framing_ends_with_done(server):
    body = {"prompt": PROMPTS[0], "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert all(json.loads(d)["object"] == "text_completion" for d in data[:-1])


def test_seed_reproducible_and_sampling_params(client):
    kw = dict(model=ALIAS, prompt=PROMPTS[0], max_tokens=16, temperature=1.2, top_p=0.9, seed=42,
              extra_body={"top_k": 20, "min_p": 0.02, "repeat_penalty": 1.1})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text


# ---- errors, raw HTTP ----------------------------------------------------------------------

def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("raw, words", [
    (b'{"prompt": "x",', "not valid JSON"),
    (b'\xff\xfe', "not valid JSON"),
    (b'[1, 2]', "JSON object"),
    (b'{"prompt": "x", "temprature": 0}', "unknown field 'temprature'"),
    (b'{"prompt": "x", "max_tokens": "16"}', "max_tokens"),
    (b'{"prompt": "x", "max_tokens": true}', "max_tokens"),
    (b'{"prompt": "x", "stream": "yes"}', "stream"),
    (b'{"prompt": 5}', "prompt must be"),
    (b'{"max_tokens": 4}', "missing field 'prompt'"),
    (b'{"prompt": "x", "top_p": 7}', "top_p"),
    (b'{"prompt": "x", "temperature": -1}', "temperature"),
    (b'{"prompt": "x", "min_p": 1.5}', "min_p"),
    (b'{"prompt": "x", "repeat_penalty": 0}', "repeat_penalty"),
    (b'{"prompt": "x", "presence_penalty": 0.5}', "presence_penalty=0.5 is not supported"),
    (b'{"prompt": "x", "frequency_penalty": -1}', "frequency_penalty=-1.0 is not supported"),
    (b'{"prompt": "x", "n": 2}', "n=2 is not supported"),
    (b'{"prompt": ["a", "b"]}', "list of 2 prompts"),
    (b'{"prompt": [1, 999999]}', "999999"),
])
def test_bad_completion_requests_are_400(server, raw, words):
    err = error_of(post(server, "/v1/completions", None, raw=raw), 400)
    assert words in err["message"], err
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, words", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": "hi", "extra": 1}]}, "unknown field 'messages.0.extra'"),
    ({"messages": [{"role": "user", "content": 5}]}, "content must be"),
    ({"messages": MESSAGES, "logprobs": True}, "logprobs"),
    ({"messages": MESSAGES, "max_tokens": 5, "max_completion_tokens": 5}, "not both"),
])
def test_bad_chat_requests_are_400(server, body, words):
    err = error_of(post(server, "/v1/chat/completions", body), 400)
    assert words in err["message"], err


def test_prompt_longer_than_the_context_names_both_sizes(server, local):
    prompt = "the list " * 700
    n = len(local.tokenize(prompt, special=True))
    assert n > N_CTX
    err = error_of(post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 4}), 400)
    assert f"{n} tokens" in err["message"] and f"{N_CTX} tokens" in err["message"], err
    assert "Model" not in err["message"] and "-c" in err["message"], err  # advice for the server's user
    err = error_of(post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]}), 400)
    assert f"{N_CTX} tokens" in err["message"] and err["param"] == "messages", err
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}])
def test_api_key_required(server, headers):
    for path in ("/v1/completions", "/v1/chat/completions"):
        err = error_of(post(server, path, {"prompt": "x", "messages": MESSAGES}, headers=headers), 401)
        assert "API key" in err["message"] and err["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models", headers=headers, timeout=10).status_code == 401
    assert httpx.get(server.url + "/metrics", headers=headers, timeout=10).status_code == 401
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # health needs no key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_unknown_endpoint_and_method(server):
    err = error_of(httpx.get(server.url + "/v1/nothing", headers=server.headers, timeout=10), 404)
    assert "/v1/nothing" in err["message"]
    err = error_of(httpx.get(server.url + "/v1/completions", headers=server.headers, timeout=10), 405)
    assert "GET" in err["message"]


# ---- concurrency ---------------------------------------------------------------------------

def test_concurrent_requests_give_the_sequential_texts(server, client):
    def one(i: int) -> str:
        p = PROMPTS[i % len(PROMPTS)]
        if i % 2:
            return client.completions.create(model=ALIAS, prompt=p, max_tokens=40, temperature=0).choices[0].text
        m = [{"role": "user", "content": p}]
        return client.chat.completions.create(model=ALIAS, messages=m, max_tokens=40,
                                              temperature=0).choices[0].message.content

    jobs = list(range(8))
    sequential = [one(i) for i in jobs]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        concurrent_ = list(ex.map(one, jobs))
    assert concurrent_ == sequential
    assert len(set(sequential)) > 3  # the prompts do give different texts
    # and they were decoded together: both slots in one batched step
    assert server.metrics()["turbosparse_batch_sequences_max"] == 2


def test_client_leaving_mid_stream_frees_its_slot(server):
    body = {"prompt": LONG_PROMPT, "max_tokens": 900, "temperature": 0}
    t0 = time.monotonic()
    whole = post(server, "/v1/completions", body).json()
    full_s = time.monotonic() - t0
    assert whole["usage"]["completion_tokens"] == 900  # this generation runs to its limit
    before = server.metrics()
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True},
                      headers=server.headers, timeout=60) as r:
        lines = r.iter_lines()
        got = 0
        for line in lines:
            got += line.startswith("data: {")
            if got == 3:
                break
        t_close = time.monotonic()
    # the response is closed: the slot must be idle again long before the full generation's time
    while server.health()["slots_processing"] > 0:
        assert time.monotonic() - t_close < max(0.5 * full_s, 0.3), "the slot is still generating"
        time.sleep(0.01)
    after = server.metrics()
    key = 'turbosparse_requests_total{endpoint="completions",outcome="cancelled"}'
    assert after.get(key, 0) == before.get(key, 0) + 1


def test_metrics(server, client):
    before = server.metrics()
    r = client.completions.create(model=ALIAS, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    after = server.metrics()
    assert after["turbosparse_generated_tokens_total"] - before["turbosparse_generated_tokens_total"] == \
        r.usage.completion_tokens
    assert after["turbosparse_prompt_tokens_total"] - before["turbosparse_prompt_tokens_total"] == \
        r.usage.prompt_tokens
    ok = 'turbosparse_requests_total{endpoint="completions",outcome="ok"}'
    assert after[ok] == before[ok] + 1
    assert 0.0 < after["turbosparse_ffn_density"] < 0.5  # the bundled model runs predicted: sparse
    assert after["turbosparse_decode_tokens_per_second"] > 0
    # one sequence per step here: the union of a step's rows is that token's rows
    assert 0.0 < after["turbosparse_ffn_union_density"] < 0.5
    assert 0.0 < after["turbosparse_ffn_union_density_avg"] <= 1.0
    assert after["turbosparse_batch_steps_total"] >= before["turbosparse_batch_steps_total"] + 8
    assert after["turbosparse_slots"] == 2 and after["turbosparse_slots_busy"] == 0
    assert after["turbosparse_queue_length"] == 0 and after["turbosparse_queue_capacity"] == 16

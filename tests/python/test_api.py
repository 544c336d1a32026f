"""The Python API (turbosparse.Model, chat templates, llama-cpp-python-shaped completions) on
tiny Hugging Face checkpoints converted by convert-turbosparse. Runs against the installed
package (`pip install .`)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest

pytest.importorskip("sentencepiece")  # hf_fixtures trains the tiny tokenizer with it

import turbosparse  # noqa: E402
from hf_fixtures import CHATML_TEMPLATE, write_tiny_checkpoint  # noqa: E402
from turbosparse import (ContextError, ContextFullError, InvalidTokenError, Model, ModelClosedError,  # noqa: E402
                         ModelLoadError, NoDefaultModelError, TemplateError, TurboSparseError)
from turbosparse._gguf_meta import read_metadata  # noqa: E402

PROMPT = "The quick brown fox"


# ---- fixtures: converted tiny models -----------------------------------------------------

def convert(hf: Path, out: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "turbosparse.convert", str(hf), "--outfile", str(out), "--outtype", "f32",
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("api")
    out = {}
    for name, arch in (("bamboo", "bamboo"), ("llama", "llama")):
        write_tiny_checkpoint(root / name, arch=arch, dtype="f32", seed=11)
        out[name] = convert(root / name, root / f"{name}.gguf")
    # no chat template in the file: chat() falls back to ChatML
    write_tiny_checkpoint(root / "plain", arch="bamboo", dtype="f32", seed=11)
    cfg_path = root / "plain" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["chat_template"]
    cfg_path.write_text(json.dumps(cfg))
    out["plain"] = convert(root / "plain", root / "plain.gguf")
    out["root"] = root
    return out


@pytest.fixture
def model(models):
    with Model(models["bamboo"], n_ctx=256, n_threads=2, seed=1234) as m:
        yield m


def patched_u32(src: Path, dst: Path, key: str, value: int) -> Path:
    """A copy of a GGUF file with the u32 metadata value of `key` replaced (same size)."""
    data = bytearray(src.read_bytes())
    needle = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", 4)  # GGUF type 4 = u32
    pos = data.find(needle)
    assert pos > 0, f"{key} is not a u32 key of {src}"
    struct.pack_into("<I", data, pos + len(needle), value)
    dst.write_bytes(bytes(data))
    return dst


def greedy_chain(m: Model, ids: List[int], n: int) -> List[int]:
    """Greedy continuation from full-sequence logits (Model.eval), stopping at end of text."""
    out: List[int] = []
    eog = {m.token_eos(), m.token_eot()}
    for _ in range(n):
        t = int(np.argmax(m.eval(ids + out)[-1]))
        if t in eog:
            break
        out.append(t)
    return out


# ---- loading, properties ------------------------------------------------------------------

def test_import_does_not_load_native_code():
    code = ("import sys, turbosparse; turbosparse.TurboSparseError; turbosparse.render_chat;"
            "print(any(k.startswith('turbosparse._lib') or k.endswith('_cffi') for k in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_properties_and_metadata(models, model):
    assert model.n_ctx == 256 and model.n_threads == 2
    assert model.ffn_mode == "predicted"  # auto: the file has predictors
    assert model.n_vocab == model.info["n_vocab"] > 0
    assert model.info["source_model_type"] == "bamboo"
    meta = model.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["turbosparse.ffn_kind"] == "drelu"
    assert meta == read_metadata(models["bamboo"])[0]
    assert model.chat_template == CHATML_TEMPLATE
    assert "tokenizer.ggml.tokens" not in meta  # arrays are left out
    assert "closed" not in repr(model)


@pytest.mark.parametrize("mode", ["dense", "exact", "predicted"])
def test_ffn_modes_and_threshold(models, mode):
    with Model(models["bamboo"], n_ctx=64, ffn_mode=mode, threshold=0.5) as m:
        assert m.ffn_mode == mode
        assert m.threshold == pytest.approx(0.5)
        m.generate(PROMPT, max_tokens=4, temperature=0)
        density = m.stats.ffn_density
        assert 0 <= density <= 1
        if mode == "dense":
            assert density == 1.0
        elif mode == "predicted":
            assert density < 1.0


def test_errors_from_c_carry_the_message(models, tmp_path):
    with pytest.raises(ModelLoadError, match="cannot open"):
        Model(tmp_path / "missing.gguf")
    data = models["bamboo"].read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated|past the end"):
        Model(tmp_path / "trunc.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all, just some words" * 10)
    with pytest.raises(ModelLoadError, match="GGUF|magic"):
        Model(tmp_path / "junk.gguf")
    with pytest.raises(ContextError, match="predictor"):
        Model(models["llama"], ffn_mode="predicted")
    with pytest.raises(ContextError, match="SwiGLU"):
        Model(models["llama"], ffn_mode="exact")
    assert issubclass(ModelLoadError, TurboSparseError)


@pytest.mark.parametrize("kwargs, exc", [
    ({"n_ctx": 0}, ValueError), ({"n_ctx": -5}, ValueError), ({"n_ctx": 2**40}, ValueError),
    ({"n_ctx": "512"}, TypeError), ({"n_threads": 0}, ValueError), ({"n_threads": 1.5}, TypeError),
    ({"ffn_mode": "sparse"}, ValueError), ({"threshold": float("nan")}, ValueError),
    ({"threshold": "1"}, TypeError), ({"seed": -1}, ValueError), ({"seed": 2**64}, ValueError),
    ({"seed": "x"}, TypeError)])
def test_bad_model_arguments(models, kwargs, exc):
    with pytest.raises(exc):
        Model(models["bamboo"], **kwargs)


def test_bad_path_types(tmp_path):
    with pytest.raises(TypeError):
        Model(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NUL"):
        Model("a\0b.gguf")


def test_default_model_lookup(models, monkeypatch, tmp_path):
    from turbosparse import model as model_mod

    monkeypatch.setattr(model_mod, "_MODELS_DIR", tmp_path / "models")
    with pytest.raises(NoDefaultModelError, match="no bundled default model"):
        Model()
    (tmp_path / "models").mkdir()
    with pytest.raises(NoDefaultModelError):
        Model()
    shutil.copy(models["bamboo"], tmp_path / "models" / "tiny.gguf")
    with Model(n_ctx=32) as m:  # dropping a file in makes it the default
        assert m.path == str(tmp_path / "models" / "tiny.gguf")
        assert m.generate(PROMPT, max_tokens=2, temperature=0) is not None


# ---- tokens and logits --------------------------------------------------------------------

def test_tokenize_detokenize(model):
    ids = model.tokenize("Hello world, this is a tiny test.")
    assert ids[0] == model.token_bos()
    assert model.tokenize("Hello", add_bos=False) == ids[1:2] or model.tokenize("Hello", add_bos=False)[0] != ids[0]
    assert model.detokenize(ids) == "Hello world, this is a tiny test."
    assert model.tokenize(b"Hello world") == model.tokenize("Hello world")
    assert model.tokenize("") == [model.token_bos()]
    im_start = model.tokenize("<|im_start|>", add_bos=False, special=True)
    assert len(im_start) == 1 and model.token_to_piece(im_start[0]) == "<|im_start|>"
    assert im_start[0] not in model.tokenize("<|im_start|>", add_bos=False, special=False)
    # llama.cpp's rule: each text fragment between special tokens gets its own dummy prefix
    frag = model.tokenize("<|im_start|>user", add_bos=False, special=True)
    assert frag == im_start + model.tokenize("user", add_bos=False)


def test_eval_logits(model):
    ids = model.tokenize(PROMPT)
    full = model.eval(ids)
    assert full.shape == (len(ids), model.n_vocab) and full.dtype == np.float32
    assert np.all(np.isfinite(full))
    for i in (0, len(ids) // 2):  # causal: a prefix gives the same logits (from an empty context)
        np.testing.assert_allclose(model.eval(ids[: i + 1])[-1], full[i], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(model.eval(np.array(ids, dtype=np.int64)), full)


def test_greedy_generate_matches_eval_chain(model):
    ids = model.tokenize(PROMPT)
    chain = greedy_chain(model, ids, 12)
    expected = model.detokenize(chain)
    got = model.generate(PROMPT, max_tokens=12, temperature=0)
    # generated text continues the prompt, so it keeps the first token's leading space
    assert got in (expected, " " + expected)
    assert model.generate(ids, max_tokens=12, temperature=0) == got  # token-id prompt


# ---- sampling, streaming, stop strings --------------------------------------------------

def test_stream_equals_text_and_seeds_reproduce(model):
    kw = dict(max_tokens=24, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    text = model.generate(PROMPT, seed=7, **kw)
    pieces = list(model.generate(PROMPT, seed=7, stream=True, **kw))
    assert "".join(pieces) == text
    assert all(isinstance(p, str) and p for p in pieces)
    outs = {model.generate(PROMPT, seed=s, **kw) for s in range(6)}
    assert len(outs) > 1  # seeds matter


def test_model_seed_gives_reproducible_runs(models):
    kw = dict(max_tokens=16, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    runs = []
    for _ in range(2):
        with Model(models["bamboo"], n_ctx=128, seed=99) as m:
            runs.append([m.generate(PROMPT, **kw) for _ in range(3)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1  # one seed per model, a fresh draw per call


def test_stop_strings(model):
    full = model.generate(PROMPT, max_tokens=40, temperature=0)
    assert len(full) > 12
    stop = full[6:9]
    cut = full[: full.find(stop)]
    assert model.generate(PROMPT, max_tokens=40, temperature=0, stop=[stop, "\x00never"]) == cut
    assert "".join(model.generate(PROMPT, max_tokens=40, temperature=0, stop=stop, stream=True)) == cut
    out = model.create_completion(PROMPT, max_tokens=40, temperature=0, stop=[stop])
    assert out["choices"][0]["text"] == cut and out["choices"][0]["finish_reason"] == "stop"
    # a stop string that never appears changes nothing
    assert model.generate(PROMPT, max_tokens=40, temperature=0, stop=["\x00never"]) == full


def test_max_tokens_and_context_end(models):
    with Model(models["bamboo"], n_ctx=24, seed=3) as m:
        n_prompt = len(m.tokenize(PROMPT))
        out = m.create_completion(PROMPT, max_tokens=10**9, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
        usage = out["usage"]
        assert usage["prompt_tokens"] == n_prompt
        assert usage["total_tokens"] <= 24
        if out["choices"][0]["finish_reason"] == "length":
            assert usage["total_tokens"] == 24
        out = m.create_completion(PROMPT, max_tokens=3, temperature=0)
        assert out["usage"]["completion_tokens"] <= 3
        assert m.generate(PROMPT, max_tokens=0) == ""
        with pytest.raises(ContextFullError):
            m.generate("word " * 40)


def test_end_of_text_token_stops(models, tmp_path):
    with Model(models["bamboo"], n_ctx=128) as m:
        ids = m.tokenize(PROMPT)
        chain = greedy_chain(m, ids, 8)
        target = chain[3]
        k = chain.index(target)
        expected = m.detokenize(chain[:k]) if k else ""
    path = patched_u32(models["bamboo"], tmp_path / "eos.gguf", "tokenizer.ggml.eos_token_id", target)
    with Model(path, n_ctx=128) as m:
        assert m.token_eos() == target
        out = m.create_completion(PROMPT, max_tokens=20, temperature=0)
        assert out["choices"][0]["text"] in (expected, " " + expected)
        assert out["choices"][0]["finish_reason"] == "stop"
        assert out["usage"]["completion_tokens"] == k


@pytest.mark.parametrize("kwargs, exc", [
    ({"temperature": "hot"}, TypeError), ({"temperature": float("nan")}, ValueError),
    ({"top_k": 2.5}, TypeError), ({"top_p": None}, TypeError), ({"repeat_penalty": 0.0}, ValueError),
    ({"repeat_penalty": -1.0}, ValueError), ({"repeat_last_n": -1}, ValueError), ({"max_tokens": 1.5}, TypeError),
    ({"max_tokens": "5"}, TypeError), ({"stop": [1]}, TypeError), ({"seed": -3}, ValueError)])
def test_bad_generation_arguments(model, kwargs, exc):
    with pytest.raises(exc):
        model.generate(PROMPT, **kwargs)
    with pytest.raises(exc):  # checked at the call, not at the first piece
        model.generate(PROMPT, stream=True, **kwargs)


def test_misuse_never_crashes(model):
    n = model.n_vocab
    for bad in ([n], [-1], [2**31], [2**70], [0, n + 5]):
        with pytest.raises(InvalidTokenError):
            model.eval(bad)
        with pytest.raises(InvalidTokenError):
            model.generate(bad)
        with pytest.raises(InvalidTokenError):
            model.detokenize(bad)
    for bad in (["a"], [1.0], [None], "abc", 5):
        with pytest.raises(TypeError):
            model.eval(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        model.eval([])
    with pytest.raises(ContextFullError):
        model.eval([1] * (model.n_ctx + 1))
    with pytest.raises(TypeError):
        model.generate(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        model.tokenize(42)  # type: ignore[arg-type]
    assert isinstance(model.tokenize("\udcff lone surrogate"), list)
    # still fine afterwards
    assert model.generate(PROMPT, max_tokens=3, temperature=0) == model.generate(PROMPT, max_tokens=3, temperature=0)


def test_repeat_penalty_changes_greedy_text(model):
    plain = model.generate(PROMPT, max_tokens=30, temperature=0)
    penalised = model.generate(PROMPT, max_tokens=30, temperature=0, repeat_penalty=5.0)
    assert isinstance(penalised, str)
    if len(set(model.tokenize(plain, add_bos=False))) < len(model.tokenize(plain, add_bos=False)):
        assert penalised != plain  # the greedy text repeats itself; a strong penalty must change it


# ---- chat ---------------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "You are tiny."}, {"role": "user", "content": "Hello world"}]
CHATML_TEXT = ("<|im_start|>system\nYou are tiny.<|im_end|>\n<|im_start|>user\nHello world<|im_end|>\n"
               "<|im_start|>assistant\n")


def test_chat_template_rendering(model, models):
    assert model.render_chat(MESSAGES) == CHATML_TEXT
    assert model.render_chat(MESSAGES, add_generation_prompt=False) == CHATML_TEXT[: -len("<|im_start|>assistant\n")]
    with Model(models["plain"], n_ctx=64) as plain:  # no template in the file: ChatML
        assert plain.chat_template is None
        assert plain.render_chat(MESSAGES) == CHATML_TEXT
    r = turbosparse.render_chat
    tmpl = ("{{ bos_token }}{% for m in messages %}\n  {% if m.role == 'user' %}[U]{{ m.content }}{% endif %}\n"
            "{% endfor %}{{ eos_token if not add_generation_prompt }}{{ extra }}")
    assert r(tmpl, MESSAGES, True, "<s>", "</s>", extra="!") == "<s>[U]Hello world!"  # trim/lstrip blocks
    assert r(tmpl, MESSAGES, False, "<s>", "</s>") == "<s>[U]Hello world</s>"
    assert r("{{ messages | tojson }}", [{"role": "user", "content": "é"}]) == '[{"role": "user", "content": "é"}]'
    with pytest.raises(TemplateError, match="no system"):
        r("{{ raise_exception('no system') }}", MESSAGES)
    with pytest.raises(TemplateError):  # sandboxed, as Hugging Face renders templates
        r("{{ ''.__class__.__mro__[1].__subclasses__() }}", MESSAGES)
    with pytest.raises(TemplateError, match="parse"):
        r("{% for %}", MESSAGES)
    with pytest.raises(TypeError):
        r(None, "hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        r(None, [{"content": "no role"}])


def test_chat_prompt_tokens_and_reply(model):
    ids = model.tokenize(CHATML_TEXT, special=True)
    im_start = model.tokenize("<|im_start|>", add_bos=False, special=True)[0]
    assert ids[0] == model.token_bos() and ids.count(im_start) == 3
    reply = model.chat(MESSAGES, max_tokens=10, temperature=0)
    assert isinstance(reply, str)
    assert "".join(model.chat(MESSAGES, max_tokens=10, temperature=0, stream=True)) == reply
    completion = model.generate(ids, max_tokens=10, temperature=0)
    assert completion in (reply, " " + reply)  # the reply is the continuation of the rendered prompt


def test_chat_stops_at_end_of_turn(models, tmp_path):
    with Model(models["bamboo"], n_ctx=128) as m:
        ids = m.tokenize(CHATML_TEXT, special=True)
        chain = greedy_chain(m, ids, 6)
        target = chain[2]
        k = chain.index(target)
        expected = m.detokenize(chain[:k]) if k else ""
    path = patched_u32(models["bamboo"], tmp_path / "eot.gguf", "tokenizer.ggml.eot_token_id", target)
    with Model(path, n_ctx=128) as m:
        assert m.token_eot() == target
        out = m.create_chat_completion(MESSAGES, max_tokens=20, temperature=0)
        assert out["choices"][0]["message"]["content"] == expected
        assert out["choices"][0]["finish_reason"] == "stop"
        assert out["usage"]["completion_tokens"] == k


# ---- llama-cpp-python shapes --------------------------------------------------------------

def test_completion_dict_shapes(model):
    out = model.create_completion(PROMPT, max_tokens=5, temperature=0)
    assert set(out) == {"id", "object", "created", "model", "choices", "usage"}
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    (c,) = out["choices"]
    assert set(c) == {"text", "index", "logprobs", "finish_reason"} and c["index"] == 0
    assert c["text"] == model.generate(PROMPT, max_tokens=5, temperature=0)
    u = out["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert model(PROMPT, max_tokens=5, temperature=0)["choices"][0]["text"] == c["text"]  # __call__
    c_usage = model.create_completion(PROMPT, max_tokens=5, temperature=0)["usage"]
    echo = model.create_completion(PROMPT, max_tokens=5, temperature=0, echo=True)
    assert echo["choices"][0]["text"] == PROMPT + c["text"]
    chunks = list(model.create_completion(PROMPT, max_tokens=5, temperature=0, stream=True))
    assert all(ch["object"] == "text_completion" and ch["id"] == chunks[0]["id"] for ch in chunks)
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == c["text"]
    assert [ch["choices"][0]["finish_reason"] for ch in chunks][-1] == c["finish_reason"]
    assert all(ch["choices"][0]["finish_reason"] is None for ch in chunks[:-1])
    assert chunks[-1]["usage"] == c_usage and all("usage" not in ch for ch in chunks[:-1])
    with pytest.raises(ValueError, match="frequency_penalty"):
        model.create_completion(PROMPT, frequency_penalty=0.5)


def test_chat_completion_dict_shapes(model):
    out = model.create_chat_completion(MESSAGES, max_tokens=6, temperature=0)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    (c,) = out["choices"]
    assert c["message"]["role"] == "assistant"
    assert c["message"]["content"] == model.chat(MESSAGES, max_tokens=6, temperature=0)
    assert c["finish_reason"] in ("stop", "length")
    chunks = list(model.create_chat_completion(MESSAGES, max_tokens=6, temperature=0, stream=True))
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == c["finish_reason"]
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == c["message"]["content"]
    assert chunks[-1]["usage"] == out["usage"] and all("usage" not in ch for ch in chunks[:-1])


# ---- statistics, reset, life cycle --------------------------------------------------------

def test_stats_and_reset(model):
    model.reset()
    s = model.stats
    assert s.n_prompt_tokens == 0 and s.n_gen_tokens == 0
    model.generate(PROMPT, max_tokens=8, temperature=1.0, seed=1)
    model.generate("Another prompt entirely", max_tokens=8, temperature=1.0, seed=2)
    s = model.stats
    assert s.n_prompt_tokens >= 2 * len(model.tokenize(PROMPT)) - 1  # both prompts, across the internal reset
    assert s.n_gen_tokens > 0 and s.gen_tokens_per_s > 0 and s.prompt_tokens_per_s > 0
    assert 0 < s.ffn_density < 1 and s.load_ms > 0
    model.reset()
    assert model.stats.n_gen_tokens == 0


def test_closed_model_raises(models):
    m = Model(models["bamboo"], n_ctx=64)
    stream = m.generate(PROMPT, max_tokens=50, temperature=0, stream=True)
    next(stream)
    m.close()
    m.close()  # twice is fine
    assert m.closed and "closed" in repr(m)
    with pytest.raises(ModelClosedError):
        next(stream)
    calls = [lambda: m.generate(PROMPT), lambda: m.chat(MESSAGES), lambda: m.tokenize("x"), lambda: m.detokenize([1]),
             lambda: m.eval([1]), lambda: m.reset(), lambda: m.stats, lambda: m.n_ctx, lambda: m.ffn_mode,
             lambda: m.create_completion(PROMPT), lambda: m.create_chat_completion(MESSAGES),
             lambda: m.generate(PROMPT, stream=True), lambda: m.__enter__()]
    for call in calls:
        with pytest.raises(ModelClosedError):
            call()
    with Model(models["bamboo"], n_ctx=64) as m2:
        pass
    assert m2.closed


# ---- threads and Ctrl-C -------------------------------------------------------------------

KW = dict(max_tokens=20, temperature=1.2, top_k=0, top_p=1.0, min_p=0.0)


def test_two_threads_share_a_model(model):
    """Documented as safe: calls serialize on the model's lock and each generation keeps its
    own tokens, so concurrent results equal sequential ones."""
    prompts = [PROMPT, "Sparse models compute only"]
    expected = [model.generate(p, seed=i, **KW) for i, p in enumerate(prompts)]
    results: dict = {}

    def work(i: int) -> None:
        results[i] = [model.generate(prompts[i], seed=i, **KW) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: [expected[i]] * 3 for i in range(2)}


def test_interleaved_streams(model):
    a_ref = model.generate(PROMPT, seed=1, **KW)
    b_ref = model.generate("Hello world", seed=2, **KW)
    a = model.generate(PROMPT, seed=1, stream=True, **KW)
    b = model.generate("Hello world", seed=2, stream=True, **KW)
    got_a, got_b = [], []
    for pa, pb in zip(a, b):
        got_a.append(pa)
        got_b.append(pb)
    got_a += list(a)
    got_b += list(b)
    assert "".join(got_a) == a_ref and "".join(got_b) == b_ref


def test_close_from_another_thread_while_generating(models):
    m = Model(models["bamboo"], n_ctx=512)
    errors: list = []

    def work() -> None:
        try:
            while True:
                m.generate(PROMPT, max_tokens=None, temperature=1.0)
        except ModelClosedError as e:
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    time.sleep(0.2)
    m.close()
    t.join(30)
    assert not t.is_alive() and len(errors) == 1


def test_keyboard_interrupt_from_stream_consumer(model):
    reference = model.generate(PROMPT, seed=5, **KW)
    pieces = []
    with pytest.raises(KeyboardInterrupt):
        for piece in model.generate("Sparse models compute only", seed=9, stream=True, **KW):
            pieces.append(piece)
            if len(pieces) == 3:
                raise KeyboardInterrupt
    assert model.generate(PROMPT, seed=5, **KW) == reference  # still usable, same results


def _interrupt_soon(stop: threading.Event) -> threading.Thread:
    """Sends SIGINT to this process every few ms until `stop` is set."""
    def spam() -> None:
        time.sleep(0.02)
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.005)

    t = threading.Thread(target=spam, daemon=True)
    t.start()
    return t


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread() or os.name != "posix",
                    reason="signals reach the main thread only")
@pytest.mark.parametrize("what", ["generate", "prompt"])
def test_sigint_during_compute_leaves_model_usable(models, what):
    with Model(models["bamboo"], n_ctx=512, n_threads=2) as m:
        long_ids = m.tokenize("The quick brown fox jumps over the lazy dog. " * 30)[:400]
        ref_logits = m.eval(long_ids)[-1].copy()
        reference = m.generate(PROMPT, seed=5, **KW)
        stop = threading.Event()
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with pytest.raises(KeyboardInterrupt):
                spam = _interrupt_soon(stop)
                while True:
                    if what == "generate":
                        m.generate(PROMPT, max_tokens=None, temperature=1.0)
                    else:  # long prompts decode in a helper thread; Ctrl-C aborts them mid-way
                        m.eval(long_ids)
        finally:
            stop.set()
            spam.join()
            time.sleep(0.05)  # let a last in-flight signal land inside the try
            signal.signal(signal.SIGINT, old)
        assert m.generate(PROMPT, seed=5, **KW) == reference
        np.testing.assert_array_equal(m.eval(long_ids)[-1], ref_logits)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread() or os.name != "posix",
                    reason="signals reach the main thread only")
def test_gil_released_prompt_aborted_midway(models, monkeypatch):
    """The Python SIGINT handler runs (it needs the GIL) while the helper thread is inside
    ts_decode, and its abort flag stops that decode part-way: some decode returns
    TS_ERR_ABORTED after having started, which a GIL held through the call would prevent."""
    from turbosparse import model as model_mod

    real = model_mod.lib.ts_decode
    codes: list = []
    monkeypatch.setattr(model_mod.lib, "ts_decode", lambda *a: codes.append(real(*a)) or codes[-1], raising=False)
    with Model(models["bamboo"], n_ctx=512, n_threads=2) as m:
        long_ids = m.tokenize("The quick brown fox jumps over the lazy dog. " * 30)[:400]
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            for _ in range(20):
                stop = threading.Event()
                try:
                    spam = _interrupt_soon(stop)
                    while True:
                        m.eval(long_ids)
                except KeyboardInterrupt:
                    pass
                finally:
                    stop.set()
                    spam.join()
                    time.sleep(0.05)
                if -4 in codes:
                    break
        finally:
            signal.signal(signal.SIGINT, old)
    assert -4 in codes


# ---- commands -----------------------------------------------------------------------------

def _script(name: str) -> str:
    path = Path(sysconfig.get_path("scripts")) / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def test_python_m_turbosparse_prints_help():
    r = subprocess.run([sys.executable, "-m", "turbosparse"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "turbosparse.Model" in r.stdout and "ts-main" in r.stdout
    r = subprocess.run([sys.executable, "-m", "turbosparse", "--bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--bogus" in r.stderr


def test_console_commands(models):
    r = subprocess.run([_script("ts-main"), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage: ts-main" in (r.stdout + r.stderr)
    r = subprocess.run([_script("ts-main"), "-m", str(models["bamboo"]), "-p", PROMPT, "-n", "4", "--temp", "0"],
                       capture_output=True, text=True, timeout=60, errors="replace")
    assert r.returncode == 0, r.stderr
    r = subprocess.run([_script("convert-turbosparse"), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "convert-turbosparse" in r.stdout


def test_exit_without_close_after_interrupts(models):
    """A model left open at exit (after aborted prompts) must not crash the interpreter on the
    way out: ggml's thread-pool threads must be gone before its library is unloaded."""
    code = f"""
import os, signal, threading, time
import turbosparse
from turbosparse import model as mm
real = mm.lib.ts_decode
mm.lib.ts_decode = lambda *a: real(*a)  # shifts module teardown order, as any user code may
m = turbosparse.Model({str(models["bamboo"])!r}, n_ctx=512, n_threads=2)
ids = m.tokenize("The quick brown fox jumps over the lazy dog. " * 30)[:400]
def spam():  # Ctrl-C every 5 ms for a second
    time.sleep(0.02)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.005)
t = threading.Thread(target=spam, daemon=True)
t.start()
# Prompts aborted again and again while the signals come. A KeyboardInterrupt can land
# anywhere in this code too (between two statements), so the loop is guarded twice and
# SIGINT ignored once the sender is done: the test's own code must not end the run early
# or leave a thread sending signals (which made the interpreter's exit wait forever).
def interrupted_prompts():
    while True:
        try:
            while t.is_alive():
                try:
                    m.eval(ids)
                except KeyboardInterrupt:
                    pass
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            pass
interrupted_prompts()
time.sleep(0.05)
signal.signal(signal.SIGINT, signal.default_int_handler)
m.generate("Hello", max_tokens=4)
print("done")
"""
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr[-2000:]

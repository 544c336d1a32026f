"""Sizes and values out of range are errors with a message, in ts-main and in Python alike:
a context whose KV cache cannot be allocated (issue 13: `ts-main -c 100000000` used to abort
in a GGML_ASSERT, exit 134) and sampling values outside their ranges (`--top-p 7`, negative
temperatures)."""
from __future__ import annotations

import subprocess

import psutil
import pytest

import turbosparse
from test_ts_main import ts_main_path

# The bundled model's KV cache per position: 6 layers x (K + V) x 256 values x 2 bytes (f16).
KV_BYTES_PER_TOKEN = 6 * 2 * 256 * 2


def needs_more_than_ram(n_ctx: int) -> None:
    """On a machine with that much memory the context would be made (and the test would
    allocate it): skip there."""
    if n_ctx * KV_BYTES_PER_TOKEN <= psutil.virtual_memory().total:
        pytest.skip(f"this machine has the memory for a context of {n_ctx} tokens")


def ts_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ts_main_path(), *args], capture_output=True, text=True, timeout=120, errors="replace")


def test_ts_main_huge_context_is_an_error_naming_the_sizes():
    needs_more_than_ram(100_000_000)
    r = ts_main("-c", "100000000", "-p", "hi", "-n", "4")
    assert r.returncode == 1, (r.returncode, r.stderr)  # not 134 (abort)
    assert "GGML_ASSERT" not in r.stderr
    assert "KV cache" in r.stderr and "100000000 tokens" in r.stderr and "MiB" in r.stderr, r.stderr


def test_python_huge_context_raises_context_error():
    needs_more_than_ram(2**31 - 1)
    with pytest.raises(turbosparse.ContextError, match=r"KV cache for a context of 2147483647 tokens needs \d+ MiB"):
        turbosparse.Model(n_ctx=2**31 - 1)


@pytest.mark.parametrize("flag, value, name", [("--top-p", "7", "top_p"), ("--top-p", "-0.1", "top_p"),
                                                ("--temp", "-1", "temperature"), ("--min-p", "2", "min_p")])
def test_ts_main_refuses_sampling_values_out_of_range(flag, value, name):
    r = ts_main(flag, value, "-p", "hi", "-n", "4")
    assert r.returncode == 1, r.stderr
    assert f"error: {name} must be" in r.stderr and value.lstrip("-") in r.stderr, r.stderr


@pytest.fixture(scope="module")
def model():
    with turbosparse.Model(n_ctx=64, seed=1) as m:
        yield m


@pytest.mark.parametrize("kwargs, name", [({"top_p": 7.0}, "top_p"), ({"top_p": -0.5}, "top_p"),
                                          ({"temperature": -0.1}, "temperature"),
                                          ({"temperature": float("inf")}, "temperature"),
                                          ({"min_p": 1.5}, "min_p"), ({"min_p": -1.0}, "min_p")])
def test_python_refuses_sampling_values_out_of_range(model, kwargs, name):
    # at the call, before any stream is consumed
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        model.generate("hi", max_tokens=2, stream=True, **kwargs)
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        model.chat([{"role": "user", "content": "hi"}], max_tokens=2, **kwargs)


def test_python_range_ends_are_accepted(model):
    # 0 and 1 are the documented "greedy" / "off" values, not errors
    out = model.generate("hi", max_tokens=2, temperature=0.0, top_p=1.0, min_p=0.0)
    assert isinstance(out, str)
    out = model.generate("hi", max_tokens=2, temperature=1.0, top_p=0.0, min_p=1.0, seed=3)
    assert isinstance(out, str)

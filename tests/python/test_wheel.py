"""Packaging: `pip wheel .` gives a wheel that installs into a fresh virtual environment (its
dependencies, libggml-python included, come from the package index) and runs there: the Python
API generates from a tiny converted model, and the console commands ts-main and
convert-turbosparse are on the venv's PATH.

The wheel is built once, without build isolation when the build requirements are already
installed (they are after `pip install .`), reusing the CMake build folder of `pip install .`;
pip's cache serves the dependencies. A few tens of seconds on a warm cache.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("sentencepiece")  # hf_fixtures trains the tiny tokenizer with it

from hf_fixtures import write_tiny_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The quick brown fox"


def run(cmd: list, cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       errors="replace", env=env)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    have_build_reqs = all(importlib.util.find_spec(m) for m in ("scikit_build_core", "cffi", "libggml"))
    cmd = [sys.executable, "-m", "pip", "wheel", ".", "-w", out, "--no-deps", "--disable-pip-version-check", "-q"]
    run(cmd + (["--no-build-isolation"] if have_build_reqs else []), ROOT, timeout=900)
    (whl,) = out.glob("turbosparse-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", env_dir], env_dir.parent)
    py = env_dir / "bin" / "python"
    run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", wheel], env_dir.parent, timeout=900)
    return env_dir


def clean_env(venv: Path) -> dict:
    """The venv's bin first on PATH, nothing of this checkout or of the test's Python visible."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TURBOSPARSE_LIB", "TS_LIB", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("turbosparse/__init__.py", "turbosparse/model.py", "turbosparse/py.typed",
                   "turbosparse/_turbosparse_cffi.py", "turbosparse/lib/libggml-sparse.so", "turbosparse/bin/ts-main",
                   "turbosparse/convert/cli.py", "turbosparse/server/app.py"):
        assert needed in names, f"{needed} is not in {wheel.name}"
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Requires-Dist: libggml-python" in text
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    points = zipfile.ZipFile(wheel).read(entry).decode()
    assert "ts-main" in points and "convert-turbosparse" in points and "ts-server" in points
    assert "Provides-Extra: server" in text


def test_fresh_venv_generates(venv, tmp_path):
    env = clean_env(venv)
    py = venv / "bin" / "python"
    # the venv imports its own copy, not this checkout's sources
    where = run([py, "-c", "import turbosparse; print(turbosparse.__file__)"], tmp_path, env=env).stdout
    assert str(venv) in where
    # convert-turbosparse from the venv's PATH
    write_tiny_checkpoint(tmp_path / "hf", arch="bamboo", dtype="f32", seed=5)
    model = tmp_path / "tiny.gguf"
    run(["convert-turbosparse", tmp_path / "hf", "--outfile", model, "--outtype", "f32", "--quiet"], tmp_path, env=env)
    # the Python API
    code = ("import json, sys, turbosparse\n"
            "with turbosparse.Model(sys.argv[1], n_ctx=128, seed=1) as m:\n"
            "    out = m.create_completion(sys.argv[2], max_tokens=12, temperature=0)\n"
            "    chat = m.chat([{'role': 'user', 'content': 'Hi'}], max_tokens=6, temperature=0)\n"
            "    print(json.dumps({'text': out['choices'][0]['text'], 'n': out['usage']['completion_tokens'],"
            " 'chat': chat, 'mode': m.ffn_mode}))\n")
    got = json.loads(run([py, "-c", code, model, PROMPT], tmp_path, env=env).stdout)
    assert got["n"] > 0 and got["mode"] == "predicted"
    # the same text as this environment's installed package gives
    import turbosparse

    with turbosparse.Model(model, n_ctx=128, seed=1) as m:
        assert got["text"] == m.generate(PROMPT, max_tokens=12, temperature=0)
        assert got["chat"] == m.chat([{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0)
    # ts-main from the venv's PATH, and python -m turbosparse
    r = run(["ts-main", "-m", model, "-p", PROMPT, "-n", "4", "--temp", "0"], tmp_path, env=env)
    assert "stats:" in r.stdout + r.stderr
    assert "turbosparse.Model" in run([py, "-m", "turbosparse"], tmp_path, env=env).stdout
    # installed without the server extra: ts-server says what to install (or, should the venv
    # have the web packages through some other dependency, fails on the missing model instead
    # of starting)
    r = subprocess.run(["ts-server", "-m", str(tmp_path / "none.gguf")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "pip install 'turbosparse[server]'" in r.stderr or "none.gguf" in r.stderr, r.stderr

"""ts-main, the command-line front end: flags, streaming output, the stats line, errors."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tiny_gguf import random_weights, tiny_config, write_gguf


def ts_main_path() -> str:
    if os.environ.get("TS_MAIN"):
        return os.environ["TS_MAIN"]
    import turbosparse

    return str(Path(list(turbosparse.__path__)[0]) / "bin" / "ts-main")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([ts_main_path(), *args], capture_output=True, text=True, input=stdin, timeout=120,
                          errors="replace")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    cfg = tiny_config("drelu")
    path = tmp_path_factory.mktemp("m") / "tiny-q8_0.gguf"
    write_gguf(path, cfg, random_weights(cfg, 3, predictor_rank=32), "q8_0")
    return path


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory) -> Path:
    cfg = tiny_config("swiglu")
    path = tmp_path_factory.mktemp("m") / "tiny-dense.gguf"
    write_gguf(path, cfg, random_weights(cfg, 4), "f16", plain_llamacpp=True)
    return path


STATS = re.compile(r"stats: prompt (\d+) tokens, ([\d.]+) tok/s \| generation (\d+) tokens, ([\d.]+) tok/s \| "
                   r"FFN neurons computed ([\d.]+)% \((\w+)\) \| load (\d+) ms")


def test_help():
    r = run("--help")
    assert r.returncode == 0
    for flag in ("-m", "-p", "-f", "-n", "-t", "-c", "--temp", "--top-k", "--top-p", "--min-p",
                 "--repeat-penalty", "--seed", "--ffn-mode", "--threshold", "--chat", "-i"):
        assert re.search(rf"(^|\s){re.escape(flag)}[ ,]", r.stdout), flag


@pytest.mark.parametrize("mode", ["predicted", "exact", "dense"])
def test_generates_and_reports(model, mode):
    r = run("-m", str(model), "-p", "abc", "-n", "16", "--temp", "0", "-t", "1", "--ffn-mode", mode)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("abc") and len(r.stdout) > 3
    m = STATS.search(r.stderr)
    assert m, r.stderr
    assert int(m.group(1)) >= 2 and int(m.group(3)) >= 1  # prompt tokens (BOS + text), generated
    assert m.group(6) == mode
    share = float(m.group(5))
    assert (share == 100.0) if mode == "dense" else (0.0 < share < 100.0)


def test_same_seed_same_text_and_threads_agree(model):
    args = ["-m", str(model), "-p", "hello", "-n", "24", "--temp", "0.9", "--seed", "42"]
    a, b = run(*args, "-t", "1"), run(*args, "-t", "1")
    assert a.returncode == 0 and a.stdout == b.stdout
    c = run(*args, "-t", "2")
    assert c.stdout == a.stdout
    d = run("-m", str(model), "-p", "hello", "-n", "24", "--temp", "0.9", "--seed", "43", "-t", "1")
    assert d.stdout != a.stdout


def test_prompt_file_and_chat(model, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("abc")
    a = run("-m", str(model), "-f", str(f), "-n", "8", "--temp", "0")
    b = run("-m", str(model), "-p", "abc", "-n", "8", "--temp", "0")
    assert a.returncode == 0 and a.stdout == b.stdout
    c = run("-m", str(model), "-p", "abc", "-n", "8", "--temp", "0", "--chat")
    assert c.returncode == 0 and STATS.search(c.stderr)


def test_interactive(model):
    r = run("-m", str(model), "-i", "-n", "6", "--temp", "0", stdin="abc\ndef\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("> ") >= 2 and STATS.search(r.stderr)


def test_plain_llamacpp_file_runs_dense(dense_model):
    r = run("-m", str(dense_model), "-p", "abc", "-n", "8")
    assert r.returncode == 0, r.stderr
    assert STATS.search(r.stderr).group(6) == "dense"
    r = run("-m", str(dense_model), "-p", "abc", "--ffn-mode", "predicted")
    assert r.returncode != 0 and "predictor" in r.stderr


def test_no_repack(tmp_path):
    """Q4_0 weights are repacked by default (quietly: ggml's per-tensor debug lines are not
    printed); --no-repack keeps them mapped; both generate."""
    cfg = tiny_config("swiglu")
    path = tmp_path / "tiny-q4_0.gguf"
    write_gguf(path, cfg, random_weights(cfg, 5), "q4_0", plain_llamacpp=True)
    assert "--no-repack" in run("--help").stdout
    for extra in ([], ["--no-repack"]):
        r = run("-m", str(path), "-p", "abc", "-n", "8", "--temp", "0", *extra)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("abc") and STATS.search(r.stderr), r.stderr
        assert "repack" not in r.stderr, r.stderr


@pytest.mark.parametrize("args, message", [
    (["-m", "/nonexistent.gguf", "-p", "x"], "cannot open"),
    (["-m", "MODEL"], "no prompt"),
    (["-m", "MODEL", "-p", "x", "--ffn-mode", "fast"], "bad value for --ffn-mode"),
    (["-m", "MODEL", "-p", "x", "-n", "many"], "bad value for -n"),
    (["-m", "MODEL", "-p", "x", "--bogus", "1"], "unknown option"),
    (["-m", "MODEL", "-p", "abc abc abc abc abc abc", "-c", "4"], "does not fit in the context"),
])
def test_errors(model, args, message):
    r = run(*[str(model) if a == "MODEL" else a for a in args])
    assert r.returncode != 0
    assert message in r.stderr, r.stderr


def test_generation_stops_at_context_size(model):
    r = run("-m", str(model), "-p", "abc", "-n", "100", "-c", "16", "--temp", "0")
    assert r.returncode == 0
    assert "context full" in r.stderr
    m = STATS.search(r.stderr)
    assert int(m.group(1)) + int(m.group(3)) <= 16


def test_ignore_eos_generates_every_token():
    """The bundled model ends this answer itself after a few tokens; --ignore-eos (for timing
    runs, as llama.cpp's) keeps generating to -n."""
    common = ("-p", "The Python interpreter", "-n", "60", "--temp", "0", "-t", "1")
    stops = run(*common)
    assert stops.returncode == 0, stops.stderr
    assert int(STATS.search(stops.stderr).group(3)) < 60  # premise: the model does stop early
    r = run(*common, "--ignore-eos")
    assert r.returncode == 0, r.stderr
    assert int(STATS.search(r.stderr).group(3)) == 59  # decoded tokens: the 60th is sampled, not decoded
    assert r.stdout.startswith(stops.stdout.rstrip("\n"))


def _package_copy(tmp_path: Path, model: Path | None) -> Path:
    """A copy of the installed package's native layout (bin/, lib/, models/) in tmp_path."""
    import shutil

    src = Path(ts_main_path()).parent.parent
    root = tmp_path / "turbosparse"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(src / "bin" / "ts-main", root / "bin" / "ts-main")
    shutil.copytree(src / "lib", root / "lib")
    if model is not None:
        (root / "models").mkdir()
        shutil.copy2(model, root / "models" / "default.gguf")
    return root / "bin" / "ts-main"


def _run_copy(exe: Path, *args: str) -> subprocess.CompletedProcess:
    import libggml

    env = dict(os.environ, LD_LIBRARY_PATH=str(Path(libggml.__file__).parent / "lib64"))
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, env=env, errors="replace")


@pytest.mark.skipif(bool(os.environ.get("TS_MAIN")), reason="needs the installed package layout, not TS_MAIN")
def test_bundled_model_is_the_default(tmp_path, model):
    exe = _package_copy(tmp_path, model)
    with_m = _run_copy(exe, "-m", str(model), "-p", "abc", "-n", "8", "--temp", "0", "-t", "1")
    without_m = _run_copy(exe, "-p", "abc", "-n", "8", "--temp", "0", "-t", "1")
    assert with_m.returncode == 0, with_m.stderr
    assert without_m.returncode == 0, without_m.stderr
    assert without_m.stdout == with_m.stdout


@pytest.mark.skipif(bool(os.environ.get("TS_MAIN")), reason="needs the installed package layout, not TS_MAIN")
def test_no_model_and_no_bundled_model_is_an_error(tmp_path):
    exe = _package_copy(tmp_path, None)
    r = _run_copy(exe, "-p", "abc")
    assert r.returncode != 0
    assert "no bundled default model" in r.stderr

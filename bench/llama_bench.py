"""Running llama.cpp's llama-bench on the dense SwiGLU file and reading its JSON."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

DEFAULT_DIRS = (Path("/tmp/llamacpp/build/bin"), Path("/tmp/llamacpp/build"))

HOW_TO_BUILD = """\
llama-bench is built from the llama.cpp sources vendored in the llama-cpp-python sdist, in a
scratch folder outside this repository (never commit llama.cpp code):
  mkdir -p /tmp/llamacpp && cd /tmp/llamacpp
  pip download --no-deps --no-binary :all: --no-build-isolation llama-cpp-python
  tar xf llama_cpp_python-*.tar.gz
  cmake -S llama_cpp_python-*/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \\
        -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
  cmake --build build -j2 --target llama-bench     # -> /tmp/llamacpp/build/bin/llama-bench
On an AMX CPU in a VM whose AMX tiles fault (llama.cpp's AMX matmul dies with SIGSEGV at
ldtilecfg: seen on a 2-core Xeon VM), configure with AMX off and the rest native:
  -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" (and the same CMAKE_CXX_FLAGS)"""


def find_llama_bench(given: Optional[Path]) -> Optional[Path]:
    if given is not None:
        return given if given.is_file() else None
    for d in DEFAULT_DIRS:
        if (d / "llama-bench").is_file():
            return d / "llama-bench"
    return None


@dataclass
class LlamaResult:
    decode_tok_s: Optional[float]
    prefill_tok_s: Optional[float]
    version: str


def run_llama_bench(binary: Path, model: Path, n_threads: int, n_gen: int, n_prompt: int,
                    repeats: int = 1, env: Optional[dict] = None, extra: tuple[str, ...] = ()) -> LlamaResult:
    """One llama-bench process: a pp<n_prompt> test and a tg<n_gen> test (llama-bench runs each
    of -p and -n as its own test, so this equals `-p 0 -n N` plus `-p P -n 0`), CPU only.
    PowerInfer's llama-bench (a Dec 2023 llama.cpp) takes the same flags and writes the same JSON."""
    cmd = [str(binary), "-m", str(model), "-p", str(n_prompt), "-n", str(n_gen), "-t", str(n_threads),
           "-r", str(repeats), "-o", "json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rows = json.loads(proc.stdout)
    decode = prefill = None
    version = ""
    for r in rows:
        version = f"{r.get('build_commit', '')} ({r.get('build_number', '')})"
        if "avg_ts" not in r:  # a Dec 2023 llama-bench: mean time per test in ns
            r["avg_ts"] = (r["n_gen"] or r["n_prompt"]) * 1e9 / r["avg_ns"]
        if r["n_gen"] > 0 and r["n_prompt"] == 0:
            decode = float(r["avg_ts"])
        elif r["n_prompt"] > 0 and r["n_gen"] == 0:
            prefill = float(r["avg_ts"])
    return LlamaResult(decode, prefill, version)

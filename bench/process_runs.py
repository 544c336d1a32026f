"""Timing each engine as a user runs it: a fresh process (warm page cache), a text prompt from
a file, then N generated tokens at temperature 0, read from the engine's own printed speeds.

  ts-main            its closing `stats:` line (prompt and generation tok/s, FFN share computed)
  llama-completion   llama.cpp's `prompt eval time` / `eval time` lines
  PowerInfer main    the same lines (PowerInfer is a llama.cpp fork of Dec 2023)

Every engine is told to ignore end-of-text (random weights may sample it) so each run
generates the same number of tokens.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

_TS_STATS = re.compile(r"stats: prompt (\d+) tokens, ([\d.]+) tok/s \| generation (\d+) tokens, ([\d.]+) tok/s \| "
                       r"FFN neurons computed ([\d.]+)%")
_LLAMA_PROMPT = re.compile(r"prompt eval time\s*=\s*([\d.]+) ms\s*/\s*(\d+) tokens")
_LLAMA_GEN = re.compile(r"(?<!prompt )eval time\s*=\s*([\d.]+) ms\s*/\s*(\d+) runs")


@dataclass
class ProcessTiming:
    prompt_tok_s: float
    gen_tok_s: float
    n_prompt: int
    n_gen: int
    density: Optional[float] = None  # share of FFN neurons computed (ts-main prints it)


class ProcessError(RuntimeError):
    pass


def _run(cmd: list[str], env: Optional[dict], timeout: float) -> str:
    # in a scratch folder: PowerInfer's main writes main.log into its working directory
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace", timeout=timeout,
                          cwd=tempfile.gettempdir(),
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ProcessError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2500:]}")
    return proc.stdout + "\n" + proc.stderr


def run_ts_main(binary: Path, model: Path, prompt_file: Path, n_gen: int, n_threads: int, n_ctx: int, mode: str,
                threshold: Optional[float], timeout: float = 900) -> ProcessTiming:
    cmd = [str(binary), "-m", str(model), "-f", str(prompt_file), "-n", str(n_gen), "-t", str(n_threads),
           "-c", str(n_ctx), "--temp", "0", "--ignore-eos", "--ffn-mode", mode]
    if threshold is not None:
        cmd += ["--threshold", repr(float(threshold))]
    out = _run(cmd, None, timeout)
    m = _TS_STATS.search(out)
    if m is None:
        raise ProcessError(f"{' '.join(cmd)}: no stats line in its output:\n{out[-1500:]}")
    return ProcessTiming(float(m.group(2)), float(m.group(4)), int(m.group(1)), int(m.group(3)),
                         float(m.group(5)) / 100.0)


def run_llama_style(binary: Path, model: Path, prompt_file: Path, n_gen: int, n_threads: int, n_ctx: int,
                    env: Optional[dict] = None, extra: tuple[str, ...] = (), timeout: float = 900) -> ProcessTiming:
    """llama.cpp's llama-completion or PowerInfer's main (same flags, same timing lines)."""
    cmd = [str(binary), "-m", str(model), "-f", str(prompt_file), "-n", str(n_gen), "-t", str(n_threads),
           "-c", str(n_ctx), "--temp", "0", "--ignore-eos", *extra]
    out = _run(cmd, env, timeout)
    p, g = _LLAMA_PROMPT.search(out), _LLAMA_GEN.search(out)
    if p is None or g is None:
        raise ProcessError(f"{' '.join(cmd)}: no timing lines in its output:\n{out[-1500:]}")
    p_ms, n_p, g_ms, n_g = float(p.group(1)), int(p.group(2)), float(g.group(1)), int(g.group(2))
    if p_ms <= 0 or g_ms <= 0 or n_g == 0:
        raise ProcessError(f"{' '.join(cmd)}: empty timings (prompt {n_p} tokens, {n_g} runs)")
    return ProcessTiming(n_p * 1000.0 / p_ms, n_g * 1000.0 / g_ms, n_p, n_g)

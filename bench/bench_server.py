#!/usr/bin/env python3
"""Serving speed of ts-server against llama.cpp's llama-server, measured in the same run.

For each engine in turn (ts-server in each of --ffn-modes, then llama-server: one server process
at a time, the same thread count and the same
number of slots), and for each client count (--clients, default 1,2,4,8): that many clients
each send --requests streaming completions (temperature 0, --max-tokens tokens, the end of
text ignored where the engine allows it) one after another. Reported per engine and client
count: aggregate generated tokens/s (all tokens over the wall time of the level), time to
first token and inter-token latency (p50/p95 over the requests; see one_request), and the ratio of
turbosparse's aggregate tokens/s to llama-server's at the same client count.

Default weights: the decode benchmark's 7B-shape Q4_0 files (bench/bench_decode.py
--prepare-only writes them under /tmp/turbosparse-bench/<shape>/): drelu-q4_0.gguf (or
ts-from-powerinfer-q4_0.gguf) for turbosparse, swiglu-q4_0.gguf, the same attention and FFN
weights as a plain llama.cpp file, for llama-server. --tiny serves the bundled model instead
(turbosparse only, unless --llama-model is given): a quick check that the script works.

llama-server, built in scratch from the llama-cpp-python sdist (as bench_decode.py's
llama.cpp):
  pip download --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==0.3.36 -d /tmp/llamacpp
  tar -xzf /tmp/llamacpp/llama_cpp_python-0.3.36.tar.gz -C /tmp/llamacpp
  cmake -S /tmp/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp -B /tmp/llamacpp/build \\
        -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
  cmake --build /tmp/llamacpp/build -j --target llama-server
  (binary: /tmp/llamacpp/build/bin/llama-server; run with --parallel N -c N*CTX, continuous
  batching is on by default)

On a shared machine the numbers move with the load: compare the ratios, which are measured
minutes apart in the same run.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import httpx

DEFAULT_WORKDIR = Path("/tmp/turbosparse-bench")
DEFAULT_LLAMA_SERVER = Path("/tmp/llamacpp/build/bin/llama-server")
PROMPT = ("The history of the city begins with a small settlement on the river, where traders from the "
          "north met farmers from the valley. Over the centuries")


@dataclass
class Result:
    engine: str
    clients: int
    tokens: int
    wall_s: float
    ttft_s: List[float] = field(default_factory=list)
    itl_s: List[float] = field(default_factory=list)
    errors: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0


def pct(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process on a free 127.0.0.1 port, waited for on /health."""

    def __init__(self, name: str, argv: List[str], port: int, timeout_s: float = 600.0) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(f"/tmp/bench_server-{name}-{port}.log", "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {self.proc.returncode}: see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not come up within {timeout_s:.0f} s: see {self.log.name}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def one_request(url: str, model: str, max_tokens: int, extra: Dict[str, object]) -> tuple:
    """(generated tokens, ttft_s, mean inter-token latency) of one streamed completion.

    The engines chunk differently (llama-server sends every token, with an empty text while a
    UTF-8 character is incomplete, as the synthetic weights' random tokens often are; ts-server
    sends pieces of text only), so: tokens from the usage both report at the end, TTFT = the
    first chunk with a choice, and the inter-token latency of a request = (last chunk - first
    chunk) / (tokens - 1)."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    t0 = time.monotonic()
    first: Optional[float] = None
    last = t0
    n = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                n = int(chunk["usage"]["completion_tokens"])
            if chunk.get("choices"):
                last = time.monotonic()
                if first is None:
                    first = last
    ttft = first - t0 if first is not None else float("nan")
    itl = (last - first) / (n - 1) if first is not None and n > 1 else float("nan")
    return n, ttft, itl


def measure(server: Server, clients: int, requests: int, max_tokens: int, extra: Dict[str, object]) -> Result:
    res = Result(server.name, clients, 0, 0.0)

    def client(_: int) -> List[tuple]:
        out = []
        for _ in range(requests):
            try:
                out.append(one_request(server.url, "m", max_tokens, extra))
            except httpx.HTTPError:
                out.append(None)
        return out

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as ex:
        runs = [r for rs in ex.map(client, range(clients)) for r in rs]
    res.wall_s = time.monotonic() - t0
    for r in runs:
        if r is None:
            res.errors += 1
            continue
        n, ttft, itl = r
        res.tokens += n
        res.ttft_s.append(ttft)
        if itl == itl:  # not NaN
            res.itl_s.append(itl)
    return res


def find_default(workdir: Path, names: Sequence[str]) -> Optional[Path]:
    for name in names:
        hits = sorted(workdir.glob(f"*/{name}"))
        if hits:
            return hits[0]
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_server.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ts-model", type=Path, help="turbosparse GGUF (default: the bench's 7B-shape dReLU Q4_0)")
    p.add_argument("--llama-model", type=Path, help="llama.cpp GGUF (default: the bench's SwiGLU Q4_0)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where bench_decode.py keeps its files")
    p.add_argument("--tiny", action="store_true", help="serve the bundled model (turbosparse only)")
    p.add_argument("--llama-server", type=Path, default=DEFAULT_LLAMA_SERVER, help="llama-server binary")
    p.add_argument("--no-llama-server", action="store_true", help="skip llama-server (no ratios)")
    p.add_argument("--clients", default="1,2,4,8", help="client counts (default %(default)s)")
    p.add_argument("--requests", type=int, default=2, help="requests per client per level (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads of both servers (default %(default)s)")
    p.add_argument("--ctx", type=int, default=512, help="context tokens per slot (default %(default)s)")
    p.add_argument("--ffn-modes", default="predicted,dense",
                   help="ts-server FFN modes to measure, each a server of its own (default %(default)s; the "
                   "tiny model: auto)")
    p.add_argument("--threshold", type=float, default=None,
                   help="predictor threshold (default: the 10%% density tau of calibration-64.json beside the "
                   "model, written by bench_decode.py, else the file's)")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not clients or min(clients) < 1:
        print("bench_server.py: --clients needs positive counts", file=sys.stderr)
        return 2
    slots = max(clients)
    ts_model = args.ts_model
    llama_model = args.llama_model
    if args.tiny:
        if ts_model is None:
            import turbosparse.model

            ts_model = turbosparse.model.default_model_path()
    else:
        ts_model = ts_model or find_default(args.workdir, ["drelu-q4_0.gguf", "ts-from-powerinfer-q4_0.gguf"])
        llama_model = llama_model or find_default(args.workdir, ["swiglu-q4_0.gguf"])
    if ts_model is None or not Path(ts_model).is_file():
        print(f"bench_server.py: no turbosparse model (looked in {args.workdir}/*/drelu-q4_0.gguf; run "
              "bench/bench_decode.py --prepare-only, or pass --ts-model / --tiny)", file=sys.stderr)
        return 2
    use_llama = not args.no_llama_server and llama_model is not None
    if use_llama and not args.llama_server.is_file():
        print(f"bench_server.py: {args.llama_server} not found (see --help for the build recipe, or "
              "--no-llama-server)", file=sys.stderr)
        return 2
    ts_server = shutil.which("ts-server") or ""
    ts_argv = ([ts_server] if ts_server else [sys.executable, "-m", "turbosparse.server"])
    threshold = args.threshold
    calib = Path(ts_model).parent / "calibration-64.json"
    if threshold is None and not args.tiny and calib.is_file():
        threshold = float(json.loads(calib.read_text())["taus"]["0.1"])
    modes = ["auto"] if args.tiny and args.ffn_modes == "predicted,dense" else args.ffn_modes.split(",")
    engines = []
    for mode in modes:
        extra_args = ["--threshold", str(threshold)] if threshold is not None and mode == "predicted" else []
        engines.append((f"ts-{mode}", lambda port, mode=mode, extra_args=extra_args: ts_argv + [
            "-m", str(ts_model), "--port", str(port), "--parallel", str(slots), "-c", str(args.ctx),
            "-t", str(args.threads), "--ffn-mode", mode, "--max-queue", "64", "--log-level", "warning"] + extra_args,
            {}))
    if use_llama:
        engines.append(("llama-server", lambda port: [
            str(args.llama_server), "-m", str(llama_model), "--port", str(port), "--host", "127.0.0.1",
            "--parallel", str(slots), "-c", str(args.ctx * slots), "-t", str(args.threads), "-tb", str(args.threads),
            "--no-webui"], {"ignore_eos": True, "cache_prompt": False}))
    print(f"turbosparse: {ts_model} (predicted threshold {threshold})\n"
          f"llama-server: {llama_model if use_llama else '(skipped)'}\n"
          f"{slots} slots, {args.threads} threads, {args.requests} requests x {args.max_tokens} tokens per client",
          flush=True)
    results: List[Result] = []
    for name, argv_of, extra in engines:
        port = free_port()
        server = Server(name, argv_of(port), port)
        try:
            one_request(server.url, "m", 4, extra)  # warm-up: page cache, first-graph allocation
            for c in clients:
                r = measure(server, c, args.requests, args.max_tokens, extra)
                results.append(r)
                print(f"  {name:14s} {c} clients: {r.tokens_per_s:7.2f} tok/s, TTFT p50 {pct(r.ttft_s, .5):.3f} s, "
                      f"ITL p50 {pct(r.itl_s, .5) * 1000:.1f} ms ({r.tokens} tokens, {r.errors} errors)", flush=True)
        finally:
            server.stop()

    by = {(r.engine, r.clients): r for r in results}
    print("\n| clients | engine | tokens/s | TTFT p50 / p95 (s) | ITL p50 / p95 (ms) | vs llama-server |")
    print("|---|---|---|---|---|---|")
    for c in clients:
        base = by.get(("llama-server", c))
        for name, _, _ in engines:
            r = by[(name, c)]
            ratio = f"{r.tokens_per_s / base.tokens_per_s:.2f}x" if base and base.tokens_per_s > 0 else "-"
            print(f"| {c} | {name} | {r.tokens_per_s:.2f} | {pct(r.ttft_s, .5):.3f} / {pct(r.ttft_s, .95):.3f} | "
                  f"{pct(r.itl_s, .5) * 1000:.1f} / {pct(r.itl_s, .95) * 1000:.1f} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps([{"engine": r.engine, "clients": r.clients, "tokens": r.tokens,
                                           "wall_s": r.wall_s, "tokens_per_s": r.tokens_per_s,
                                           "ttft_p50": pct(r.ttft_s, .5), "ttft_p95": pct(r.ttft_s, .95),
                                           "itl_p50": pct(r.itl_s, .5), "itl_p95": pct(r.itl_s, .95),
                                           "errors": r.errors} for r in results], indent=1))
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

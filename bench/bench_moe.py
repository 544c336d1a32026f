#!/usr/bin/env python3
"""TurboSparse-Mixtral (MoE) decode and prefill speed of turbosparse against llama.cpp.

What it does, in one run:
 1. writes a synthetic TurboSparse-Mixtral-shaped pair of GGUF files per type (synth_moe.py:
    n_embd 4096, 8 experts of n_ff 14336, top-2, 32/8 heads, vocab 32000, 4 layers by default,
    rank-1024 per-expert predictors, random routing over all experts): a turbosparse dReLU
    file and a plain llama.cpp SwiGLU Mixtral file with the same attention/router/gate/up bytes;
 2. for each natural dReLU density (--natural-densities, ~10% and ~25% per expert) rewrites
    the files' FFN norms in place (the only bytes that set it), and finds the predictor
    thresholds giving 10% / 25% predicted density by bisection on the runtime's own count;
 3. measures, interleaved round by round with the same thread count, in two styles:
      api      turbosparse through its C API in this process (--prompt-token prefill, decode
               from an empty cache); llama.cpp's llama-bench;
      process  a fresh ts-main / llama-completion each (warm page cache), a --prompt-token text
               prompt, then --gen-tokens tokens at temperature 0, their own printed speeds;
    modes: dense, predicted 10% / 25%, exact on the dReLU file; dense on the SwiGLU file;
    medians over the rounds;
 4. prints tok/s, the ratio to llama.cpp, the weight bytes each engine reads per decoded token
    (llama.cpp: attention + router + head + two whole experts per layer; ours: what the mode
    reads of the two routed experts and their predictors), the ideal ratio those bytes give
    and the share of it achieved.

On a shared machine run it in its own session with a raised autogroup priority (quiet.py):
  setsid bash -c 'echo -20 > /proc/self/autogroup; exec python bench/bench_moe.py'
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_bench import HOW_TO_BUILD, find_llama_bench, run_llama_bench  # noqa: E402
from process_runs import run_llama_style, run_ts_main  # noqa: E402
from quiet import Quiet  # noqa: E402
from roofline import measure_bandwidth  # noqa: E402
from synth_moe import MoeShape, set_natural_density, write_pair  # noqa: E402
from ts_runtime import BenchError, Context, Model, Runtime, default_lib  # noqa: E402

TINY = dict(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_vocab=1024, rank=64)


def log(msg: str) -> None:
    print(f"[bench_moe] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Config:
    mode: str                 # dense | predicted | exact | llama.cpp
    density: Optional[float] = None
    swiglu_file: bool = False
    per_expert: bool = False  # the graph before the MoE ops (TURBOSPARSE_MOE_PER_EXPERT=1)

    @property
    def label(self) -> str:
        if self.mode == "llama.cpp":
            return "llama.cpp (swiglu)"
        old = " [per-expert]" if self.per_expert else ""
        if self.mode == "predicted":
            return f"ts predicted {self.density:.0%}{old}"
        return "ts dense (swiglu file)" if self.swiglu_file else f"ts {self.mode}{old}"


@dataclass
class Samples:
    decode: list[float] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)
    density: list[float] = field(default_factory=list)


@dataclass
class MoeBytes:
    """Weight bytes of one file, by what reads them (all layers)."""
    base: int       # attention, norms, router, output head, one embedding row
    gate: int       # all experts
    up: int
    down: int
    predictor: int
    n_expert: int
    n_used: int

    def per_token(self, mode: str, density: float = 1.0, gate_positive: float = 1.0, active: float = 1.0,
                  sparse_down: bool = False) -> float:
        share = self.n_used / self.n_expert  # the routed experts' part of every expert tensor
        if mode == "dense":
            return self.base + share * (self.gate + self.up + (active if sparse_down else 1.0) * self.down)
        if mode == "predicted":
            return self.base + share * (self.predictor + density * (self.gate + self.up + self.down))
        if mode == "exact":
            return self.base + share * (self.gate + gate_positive * self.up + density * self.down)
        raise ValueError(mode)


def moe_bytes(path: Path) -> MoeBytes:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    b = dict(base=0, gate=0, up=0, down=0, predictor=0)
    for t in r.tensors:
        n = int(t.n_bytes)
        if t.name == "token_embd.weight":
            b["base"] += n // int(t.shape[-1])
        elif "_exps." in t.name:
            key = ("predictor" if ".ffn_pred_" in t.name else "gate" if ".ffn_gate_" in t.name
                   else "up" if ".ffn_up_" in t.name else "down")
            b[key] += n
        else:
            b["base"] += n
    x = int(r.get_field("llama.expert_count").parts[-1][0])
    k = int(r.get_field("llama.expert_used_count").parts[-1][0])
    return MoeBytes(n_expert=x, n_used=k, **b)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_moe.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=HOW_TO_BUILD + "\n  cmake --build build -j2 --target llama-completion")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/turbosparse-bench"),
                   help="where the generated GGUF files live (reused; default %(default)s)")
    p.add_argument("--layers", type=int, default=4, help="layers (default %(default)s)")
    p.add_argument("--types", default="q4_0,f16", help="comma list of q4_0, f16 (default %(default)s)")
    p.add_argument("--densities", default="0.10,0.25", help="predicted densities (default %(default)s)")
    p.add_argument("--natural-densities", default="0.10,0.25", help="natural dReLU densities (default %(default)s)")
    p.add_argument("--styles", default="api,process", help="api, process (default %(default)s)")
    p.add_argument("--tokens", type=int, default=32, help="decoded tokens per API measurement (default %(default)s)")
    p.add_argument("--gen-tokens", type=int, default=64, help="generated tokens per process run (default %(default)s)")
    p.add_argument("--prompt", type=int, default=128, help="prefill prompt length (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians reported (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines (default %(default)s)")
    p.add_argument("--tiny", action="store_true", help=f"a tiny model ({TINY}), for tests")
    p.add_argument("--lib", type=Path, help="libggml-sparse.so (default: the installed package's)")
    p.add_argument("--llama-bench", type=Path, metavar="PATH",
                   help="llama.cpp's llama-bench (default /tmp/llamacpp/build/bin/llama-bench); llama-completion beside it")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp (no ratios)")
    p.add_argument("--no-wait-quiet", action="store_true", help="do not wait for other processes to leave the cores")
    p.add_argument("--max-others", type=float, default=0.25, metavar="CORES",
                   help="CPU other processes may use during a measurement (default %(default)s)")
    p.add_argument("--per-expert", action="store_true",
                   help="also time (api style) the per-expert graph the MoE ops replaced (TURBOSPARSE_MOE_PER_EXPERT=1): "
                        "dense, predicted at the first density, exact; before/after in the same run")
    p.add_argument("--prepare-only", action="store_true", help="write the files and stop")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the result rows as JSON")
    return p


def calibrate(model: Model, n_vocab: int, targets: list[float], threads: int, n_tokens: int = 32) -> dict[float, float]:
    """tau per target predicted density: bisection on the density the runtime counts over a
    prefill of n_tokens random tokens (the threshold is shared by all layers and experts)."""
    rng = random.Random(1)
    toks = [rng.randrange(3, n_vocab) for _ in range(n_tokens)]

    def density(tau: float) -> float:
        ctx = Context(model, "predicted", threads, n_tokens + 8, tau)
        try:
            return ctx.time_prefill(toks).density
        finally:
            ctx.close()

    taus = {}
    for d in targets:
        lo, hi = -1.0, 1.0
        while density(hi) > d:
            hi *= 2
        for _ in range(14):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if density(mid) > d else (lo, mid)
        taus[d] = hi
    return taus


def prompt_file(root: Path, n_tokens: int) -> Path:
    """Words 'a'..'z': one token each in the synthetic vocabulary (tiny_gguf.vocab), BOS added."""
    path = root / f"prompt-{n_tokens}.txt"
    path.write_text(" ".join(chr(ord("a") + i % 26) for i in range(n_tokens - 1)))
    return path


def median(xs: list[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    densities = [float(d) for d in args.densities.split(",")]
    naturals = [float(d) for d in args.natural_densities.split(",")]
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    if not set(styles) <= {"api", "process"} or not set(types) <= {"q4_0", "f16"}:
        log("--styles takes api, process; --types q4_0, f16")
        return 2
    shape = MoeShape(**(TINY | {"n_layer": args.layers} if args.tiny else {"n_layer": args.layers}))
    lib = args.lib or default_lib()
    if lib is None or not lib.is_file():
        log("no libggml-sparse.so: pip install . (or --lib)")
        return 2
    ts_main = lib.parent.parent / "bin" / "ts-main"
    llama_bench = llama_completion = None
    if not args.no_llama_cpp:
        llama_bench = find_llama_bench(args.llama_bench)
        llama_completion = (args.llama_bench or Path("/tmp/llamacpp/build/bin/llama-bench")).parent / "llama-completion"
        if llama_bench is None or ("process" in styles and not llama_completion.is_file()):
            log("llama.cpp's llama-bench / llama-completion not found (--llama-bench PATH or --no-llama-cpp). "
                + HOW_TO_BUILD)
            return 2
    root = args.workdir / shape.key()
    files = {q: write_pair(root, shape, q, naturals[0], log=log) for q in types}
    if args.prepare_only:
        return 0
    prompt = prompt_file(root, args.prompt)
    rt = Runtime(lib)
    quiet = Quiet(not args.no_wait_quiet, args.max_others, log=log)
    others: list[float] = []
    rng = random.Random(0)
    n_ctx = max(args.prompt, args.tokens + 1) + 16
    n_ctx_process = args.prompt + args.gen_tokens + 64
    bandwidth = [measure_bandwidth(args.threads)]
    log(f"read bandwidth {bandwidth[0]:.1f} GB/s")
    results: dict[tuple, Samples] = {}  # (natural, type, style, config)
    taus_all: dict[tuple[float, str], dict[float, float]] = {}
    def record(key: tuple, c: Config, timing: tuple) -> None:
        """Adds one timing (decode, prefill, density, others' load) under key = (natural, type, style)."""
        dec, pre, dens, busy = timing
        natural, q, style = key
        s = results.setdefault((natural, q, style, c), Samples())
        others.append(busy)
        s.decode.append(dec), s.prefill.append(pre), s.density.append(dens)
        log(f"  {q} {c.label} ({style}): decode {dec:.2f} tok/s, prefill {pre:.1f} tok/s, density {dens:.3f}")

    def measure(c: Config, style: str, path: Path, model: Optional[Model], tau: Optional[float]) -> tuple:
        """One timing of config c in one style: (decode tok/s, prefill tok/s, density, others' load)."""
        if c.mode == "llama.cpp" and style == "api":
            res, busy = quiet.measure(c.label, lambda: run_llama_bench(
                llama_bench, path, args.threads, args.tokens, args.prompt))
            return res.decode_tok_s, res.prefill_tok_s, 1.0, busy
        if c.mode == "llama.cpp":
            t, busy = quiet.measure(c.label, lambda: run_llama_style(
                llama_completion, path, prompt, args.gen_tokens, args.threads, n_ctx_process, extra=("-no-cnv",)))
            return t.gen_tok_s, t.prompt_tok_s, 1.0, busy
        if style == "api":
            toks = [rng.randrange(3, shape.n_vocab) for _ in range(args.prompt)]
            gen = [rng.randrange(3, shape.n_vocab) for _ in range(args.tokens)]

            def one():
                if c.per_expert:  # read when a graph is built
                    os.environ["TURBOSPARSE_MOE_PER_EXPERT"] = "1"
                ctx = Context(model, c.mode, args.threads, n_ctx, tau)
                try:
                    ctx.time_prefill(toks)  # warm-up: allocates the batch graph
                    return ctx.time_prefill(toks), ctx.time_decode(gen)
                finally:
                    ctx.close()
                    os.environ.pop("TURBOSPARSE_MOE_PER_EXPERT", None)

            (pr, d), busy = quiet.measure(c.label, one)
            return d.tok_s, pr.tok_s, d.density, busy
        t, busy = quiet.measure(c.label, lambda: run_ts_main(
            ts_main, path, prompt, args.gen_tokens, args.threads, n_ctx_process, c.mode, tau))
        return t.gen_tok_s, t.prompt_tok_s, t.density, busy

    for natural in naturals:
        for q in types:
            ts_file, mix_file = files[q]
            for f in (ts_file, mix_file):
                set_natural_density(f, natural)
            model = Model(rt, ts_file)
            try:
                taus = calibrate(model, shape.n_vocab, densities, args.threads)
            finally:
                model.close()
            taus_all[(natural, q)] = taus
            log(f"natural {natural:.0%} {q}: " + ", ".join(f"tau({d:.0%}) = {t:.4g}" for d, t in taus.items()))
            configs = ([Config("dense")] + [Config("predicted", d) for d in densities] + [Config("exact"),
                       Config("dense", swiglu_file=True)] + ([Config("llama.cpp")] if llama_bench else []))
            if args.per_expert:
                configs += [Config("dense", per_expert=True), Config("predicted", densities[0], per_expert=True),
                            Config("exact", per_expert=True)]
            # One engine holds one file at a time (our api model is closed before a ts-main or
            # llama.cpp process starts): an F16 pair at 4 layers is more than RAM holds at once,
            # and each engine's copy of the weights must not push the other's file out.
            for r in range(args.repeats):
                log(f"natural {natural:.0%} {q}: round {r + 1}/{args.repeats}")
                for path in (ts_file, mix_file):
                    ours = [c for c in configs if c.mode != "llama.cpp" and (mix_file if c.swiglu_file else ts_file) == path]
                    theirs = [c for c in configs if c.mode == "llama.cpp" and path == mix_file]
                    for style in styles:
                        block = [c for c in ours if style == "api" or not c.per_expert]
                        model = Model(rt, path) if style == "api" and block else None
                        try:
                            for c in block:
                                tau = taus[c.density] if c.mode == "predicted" else None
                                record((natural, q, style), c, measure(c, style, path, model, tau))
                        finally:
                            if model:
                                model.close()
                        for c in theirs:
                            record((natural, q, style), c, measure(c, style, path, None, None))
    bandwidth.append(measure_bandwidth(args.threads))
    rows = make_rows(results, files, max(bandwidth))
    print_report(args, argv, shape, rows, taus_all, bandwidth, others, lib, llama_bench)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def make_rows(results: dict[tuple, Samples], files: dict[str, tuple[Path, Path]], bw: float) -> list[dict]:
    rows = []
    nbytes = {q: (moe_bytes(ts), moe_bytes(mix)) for q, (ts, mix) in files.items()}
    for (natural, q, style, c), s in results.items():
        ref = results.get((natural, q, style, Config("llama.cpp")))
        b_ts, b_mix = nbytes[q]
        exact = results.get((natural, q, style, Config("exact")))
        active = median(exact.density) if exact else natural
        gate_pos = math.sqrt(active)  # P(g > 0) = P(u > 0) by construction (synth_moe.py)
        for phase in ("decode", "prefill"):
            tok_s = median(getattr(s, phase))
            ref_tok_s = median(getattr(ref, phase)) if ref else None
            row = {"natural_density": natural, "type": q, "style": style, "phase": phase, "engine": c.label,
                   "density": median(s.density), "tok_s": tok_s, "llama_cpp_tok_s": ref_tok_s,
                   "vs_llama_cpp": tok_s / ref_tok_s if ref_tok_s else None, "samples": getattr(s, phase)}
            if phase == "decode":
                if c.mode == "llama.cpp" or c.swiglu_file:
                    nb = b_mix.per_token("dense")
                else:
                    nb = b_ts.per_token(c.mode, median(s.density), gate_pos, active, sparse_down=True)
                ideal = b_mix.per_token("dense") / nb
                row |= {"bytes_per_token": int(nb), "ideal_ratio": ideal, "roofline_tok_s": bw * 1e9 / nb,
                        "share_of_ideal": row["vs_llama_cpp"] / ideal if row["vs_llama_cpp"] else None}
            rows.append(row)
    return rows


def print_report(args, argv, shape: MoeShape, rows: list[dict], taus_all, bandwidth: list[float],
                 others: list[float], lib: Path, llama_bench: Optional[Path]) -> None:
    print(f"\ncommand: python bench/bench_moe.py {' '.join(argv)}")
    print(f"model: synthetic TurboSparse-Mixtral shape {shape.key()}; threads {args.threads}; "
          f"median of {args.repeats} interleaved round(s); turbosparse {lib}; llama.cpp {llama_bench}")
    print(f"styles: api = C API, {args.prompt}-token prefill + {args.tokens} decoded tokens (llama.cpp: llama-bench); "
          f"process = fresh ts-main / llama-completion, {args.prompt}-token prompt + {args.gen_tokens} tokens")
    for (natural, q), taus in taus_all.items():
        print(f"natural {natural:.0%} {q}: " + ", ".join(f"tau({d:.0%}) = {t:.4g}" for d, t in taus.items()))
    print(f"read bandwidth {' / '.join(f'{b:.1f}' for b in bandwidth)} GB/s (start / end); other processes "
          f"during measurements: at most {max(others, default=0):.2f} cores, median "
          f"{statistics.median(others) if others else 0:.2f}\n")
    order = {"llama.cpp (swiglu)": 0, "ts dense (swiglu file)": 1, "ts dense": 2, "ts exact": 9,
             "ts dense [per-expert]": 10, "ts exact [per-expert]": 12}
    rows = sorted(rows, key=lambda r: (r["natural_density"], r["type"], r["style"], r["phase"],
                                       order.get(r["engine"], 5), r["engine"]))
    head = (f"{'natural':7} {'type':5} {'style':7} {'phase':7} {'engine / mode':30} {'density':>7} {'tok/s':>8} "
            f"{'vs llama':>8} {'MB/tok':>7} {'ideal':>6} {'share':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        vs = f"{r['vs_llama_cpp']:.2f}x" if r["vs_llama_cpp"] else "-"
        extra = ""
        if r["phase"] == "decode":
            share = f"{r['share_of_ideal']:.0%}" if r["share_of_ideal"] else "-"
            extra = f" {r['bytes_per_token'] / 1e6:7.0f} {r['ideal_ratio']:5.2f}x {share:>6}"
        print(f"{r['natural_density']:<7.0%} {r['type']:5} {r['style']:7} {r['phase']:7} {r['engine']:30} "
              f"{r['density']:7.3f} {r['tok_s']:8.2f} {vs:>8}{extra}")
    print("\nMB/tok: weight bytes one decoded token reads; ideal: llama.cpp's bytes / ours (the speed-up a purely "
          "bandwidth-bound decode would give); share: achieved ratio / ideal.")


if __name__ == "__main__":
    t0 = time.time()
    try:
        rc = main()
    except BenchError as e:
        log(f"error: {e}")
        rc = 1
    log(f"done in {time.time() - t0:.0f} s")
    sys.exit(rc)

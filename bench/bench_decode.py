#!/usr/bin/env python3
"""Decode and prefill speed of turbosparse (dense, predicted, exact) against llama.cpp.

What it does, in one run:
 1. writes a synthetic Mistral-7B-shaped checkpoint (n_embd 4096, n_ff 14336, 32 heads, 8 KV
    heads, vocab 32000, 8 layers by default, predictor rank 1024) twice, as tiny-HF folders
    that share one weights file (synth_model.py): a dReLU "bamboo" model with predictors and
    the same weights as a dense SwiGLU "mistral" model. Random weights, shaped so that dReLU
    leaves ~10% of the neurons active per token (see synth_model.py for how);
 2. calibrates the predictor threshold to 10% and 25% predicted density on real forward
    passes (calibrate.py: numpy forward, quantile of the predictor logits of all layers);
 3. converts both with the project's converter to Q4_0 and F16; the SwiGLU files are plain
    llama.cpp files (ffn_down, no turbosparse FFN tensors) holding the same attention/FFN
    bytes: llama.cpp cannot run dReLU, and a dense model of the same shape reads the same
    bytes per token, which is the fair baseline (as the paper compares dense llama.cpp with
    the sparse engine);
 4. measures, interleaved round by round with the same thread count: turbosparse decode and
    128-token prefill tokens/s in each mode, and llama-bench on the SwiGLU file; medians over
    the rounds;
 5. prints a table with ratios to llama.cpp, and the roofline: weight bytes each mode reads per
    token (from the files' tensor sizes and the measured densities) divided by a read bandwidth
    measured in the same run (roofline.py) gives an ideal tokens/s; the achieved share of it
    shows how close each engine is to the memory bound.

Generated files are kept in --workdir (keyed by shape) and reused by later runs.

On a shared machine: the script waits for other processes to leave the cores alone before
each measurement and redoes a measurement they disturbed (quiet.py). Background jobs at a
positive nice value still take half of a 2-core machine under autogroup scheduling unless the
benchmark runs in its own session with a raised autogroup priority:
  setsid bash -c 'echo -20 > /proc/self/autogroup; exec python bench/bench_decode.py --json out.json'
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate import Calibration, calibrate  # noqa: E402
from quiet import Quiet, autogroup_nice  # noqa: E402
from llama_bench import HOW_TO_BUILD, find_llama_bench, run_llama_bench  # noqa: E402
from roofline import FileBytes, file_bytes, measure_bandwidth  # noqa: E402
from synth_model import SynthShape, write_checkpoints  # noqa: E402
from ts_runtime import BenchError, Context, Model, Runtime, default_lib  # noqa: E402

# The llama.cpp baseline: llama-bench built from the llama.cpp sources vendored in the
# llama-cpp-python sdist, in a scratch folder outside this repository (never commit llama.cpp):
#   pip download --no-deps --no-binary :all: --no-build-isolation llama-cpp-python
#   cmake -S llama_cpp_python-*/vendor/llama.cpp -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
#   cmake --build build --target llama-bench
# (the full recipe is HOW_TO_BUILD in llama_bench.py, printed by --help).
REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_layer=2, n_embd=256, n_ff=1024, n_head=4, n_head_kv=2, n_vocab=1024, rank=64)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Config:
    """One turbosparse measurement: a file and an FFN mode (and a target density)."""
    qtype: str
    mode: str                  # dense | predicted | exact
    density: Optional[float]   # target predicted density (predicted mode only)
    swiglu_file: bool = False  # dense mode on the llama.cpp file itself

    @property
    def label(self) -> str:
        if self.mode == "predicted":
            return f"predicted {self.density:.0%}"
        return "dense (swiglu file)" if self.swiglu_file else self.mode


@dataclass
class Samples:
    decode: list[float] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)
    density: list[float] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_decode.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=HOW_TO_BUILD + "\n\nThe report starts with the exact command; put it next to the table.")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/turbosparse-bench"),
                   help="where generated checkpoints and GGUF files live (reused; default %(default)s)")
    p.add_argument("--layers", type=int, default=8, help="number of layers (default %(default)s)")
    p.add_argument("--tokens", type=int, default=32, help="decoded tokens per measurement (default %(default)s)")
    p.add_argument("--prompt", type=int, default=128, help="prefill prompt length (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines (default %(default)s)")
    p.add_argument("--types", default="q4_0,f16", help="comma list of q4_0, f16, q8_0 (default %(default)s)")
    p.add_argument("--densities", default="0.10,0.25", help="predicted densities (default %(default)s)")
    p.add_argument("--calib-tokens", type=int, default=64, help="tokens of the calibration forward (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 round, 8 decode tokens, a 32-token prompt, 16 calibration tokens, q4_0 only "
                        "(explicit options still win)")
    p.add_argument("--tiny", action="store_true",
                   help=f"a tiny model instead of the Mistral-7B shape ({TINY}); for tests")
    p.add_argument("--lib", type=Path,
                   help="libggml-sparse.so to time (default: $TS_LIB or $TURBOSPARSE_LIB, else the installed package's)")
    p.add_argument("--llama-bench", type=Path, metavar="PATH",
                   help="llama.cpp's llama-bench binary (default: /tmp/llamacpp/build/bin/llama-bench)")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp (ratios are then absent)")
    p.add_argument("--no-swiglu-dense", action="store_true",
                   help="skip timing turbosparse's dense mode on the llama.cpp (SwiGLU) file itself")
    p.add_argument("--no-wait-quiet", action="store_true",
                   help="measure at once, even while other processes use the cores (default: wait for a quiet "
                        "machine before each measurement and redo one that other processes disturbed)")
    p.add_argument("--max-others", type=float, default=0.25, metavar="CORES",
                   help="CPU (in cores) other processes may use during a measurement (default %(default)s)")
    p.add_argument("--prepare-only", action="store_true",
                   help="write, calibrate and convert the model files, then stop (to measure later on a quiet machine)")
    p.add_argument("--no-mmap", action="store_true",
                   help="load turbosparse models into huge-page RAM instead of mapping them (ts-main --no-mmap)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the result rows as JSON")
    p.add_argument("--seed", type=int, default=0, help="weights seed (default %(default)s)")
    return p


def apply_quick(args: argparse.Namespace, argv: list[str]) -> None:
    """--quick changes the defaults of the options not given on the command line."""
    if not args.quick:
        return
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    for opt, value in (("--repeats", 1), ("--tokens", 8), ("--prompt", 32), ("--calib-tokens", 16),
                       ("--types", "q4_0")):
        if opt not in given:
            setattr(args, opt[2:].replace("-", "_"), value)


def convert(folder: Path, out: Path, qtype: str) -> Path:
    if out.is_file():
        return out
    log(f"converting {folder.name} -> {out.name}")
    tmp = out.with_suffix(".part")
    subprocess.run([sys.executable, str(REPO / "convert" / "convert-turbosparse.py"), str(folder),
                    "--outfile", str(tmp), "--outtype", qtype, "--quiet", "--force"], check=True)
    tmp.rename(out)
    return out


def get_calibration(root: Path, drelu: Path, densities: list[float], n_tokens: int) -> Calibration:
    path = root / f"calibration-{n_tokens}.json"
    if path.is_file():
        cal = Calibration.from_json(json.loads(path.read_text()))
        if all(d in cal.taus for d in densities):
            return cal
    log(f"calibrating predictor thresholds on a {n_tokens}-token forward pass")
    cal = calibrate(drelu, json.loads((drelu / "config.json").read_text()), densities, n_tokens)
    path.write_text(json.dumps(cal.to_json(), indent=1))
    return cal


def median(xs: list[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    apply_quick(args, argv)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    densities = [float(d) for d in args.densities.split(",")]
    dims = dict(TINY) if args.tiny else {}
    if not args.tiny or any(a.startswith("--layers") for a in argv):
        dims["n_layer"] = args.layers
    shape = SynthShape(seed=args.seed, **dims)

    lib = args.lib or default_lib()
    if lib is None or not lib.is_file():
        log("no libggml-sparse.so: pip install . (or give --lib / TS_LIB)")
        return 2
    llama_bench = None
    if not args.no_llama_cpp:
        llama_bench = find_llama_bench(args.llama_bench)
        if llama_bench is None:
            log("llama-bench not found (give --llama-bench PATH or --no-llama-cpp). " + HOW_TO_BUILD)
            return 2

    root = args.workdir / shape.key()
    drelu_hf, swiglu_hf = write_checkpoints(root, shape, log)
    cal = get_calibration(root, drelu_hf, densities, args.calib_tokens)
    files = {q: (convert(drelu_hf, root / f"drelu-{q}.gguf", q), convert(swiglu_hf, root / f"swiglu-{q}.gguf", q))
             for q in types}
    if args.prepare_only:
        log(f"files ready in {root}")
        return 0

    rt = Runtime(lib)
    n_ctx = max(args.prompt, args.tokens + 1) + 16
    rng = random.Random(args.seed)
    n_vocab = shape.n_vocab
    configs: list[Config] = []
    for q in types:
        configs.append(Config(q, "dense", None))
        configs += [Config(q, "predicted", d) for d in densities]
        configs.append(Config(q, "exact", None))
        if not args.no_swiglu_dense:
            configs.append(Config(q, "dense", None, swiglu_file=True))
    # One model per file stays loaded (mmap) for the whole run; a context lives for one
    # measurement only: every context owns a ggml thread pool, and an idle pool beside the
    # measured one slowed decoding ~4x on a 2-core machine (reported to the runtime).
    models: dict[Path, Model] = {}
    for c in configs:
        path = files[c.qtype][1 if c.swiglu_file else 0]
        if path not in models:
            models[path] = Model(rt, path, use_mmap=not args.no_mmap)
    samples = {c: Samples() for c in configs}
    llama = {q: Samples() for q in types}
    llama_version = ""

    quiet = Quiet(not args.no_wait_quiet, args.max_others, log=log)
    others: list[float] = []

    def measured(label: str, fn):
        result, busy = quiet.measure(label, fn)
        others.append(busy)
        return result

    load = [os.getloadavg()[0]]
    bandwidth = [measured("bandwidth", lambda: measure_bandwidth(args.threads))]
    log(f"read bandwidth, {args.threads} threads: {bandwidth[0]:.1f} GB/s; load average {load[0]:.2f}")
    for r in range(args.repeats):
        log(f"round {r + 1}/{args.repeats}")
        for q in types:
            for c in (c for c in configs if c.qtype == q):
                prompt = [rng.randrange(3, n_vocab) for _ in range(args.prompt)]
                gen = [rng.randrange(3, n_vocab) for _ in range(args.tokens)]

                def one(c: Config = c, prompt: list[int] = prompt, gen: list[int] = gen):
                    ctx = Context(models[files[c.qtype][1 if c.swiglu_file else 0]], c.mode, args.threads, n_ctx,
                                  cal.taus[c.density] if c.mode == "predicted" else None)
                    try:
                        ctx.time_prefill(prompt)  # warm-up, as llama-bench's: allocates the batch graph's buffers
                        return ctx.time_prefill(prompt), ctx.time_decode(gen)
                    finally:
                        ctx.close()

                p, d = measured(f"{q} {c.label}", one)
                samples[c].decode.append(d.tok_s)
                samples[c].prefill.append(p.tok_s)
                samples[c].density.append(d.density)
                log(f"  {q} {c.label}: decode {d.tok_s:.2f} tok/s (density {d.density:.3f}), "
                    f"prefill {p.tok_s:.1f} tok/s")
            if llama_bench is not None:
                res = measured(f"{q} llama.cpp", lambda: run_llama_bench(llama_bench, files[q][1], args.threads,
                                                                         args.tokens, args.prompt))
                llama_version = res.version
                if res.decode_tok_s is None or res.prefill_tok_s is None:
                    raise BenchError(f"llama-bench gave no {'decode' if res.decode_tok_s is None else 'prefill'} result")
                llama[q].decode.append(res.decode_tok_s)
                llama[q].prefill.append(res.prefill_tok_s)
                log(f"  {q} llama.cpp: decode {res.decode_tok_s:.2f} tok/s, prefill {res.prefill_tok_s:.1f} tok/s")
    bandwidth.append(measured("bandwidth", lambda: measure_bandwidth(args.threads)))
    load.append(os.getloadavg()[0])
    bw = max(bandwidth)
    for m in models.values():
        m.close()
    if max(others) > args.max_others:
        log(f"warning: other processes used up to {max(others):.2f} cores during kept measurements; "
            "those numbers are not trustworthy")

    rows = make_rows(configs, samples, llama, {q: (file_bytes(f[0]), file_bytes(f[1])) for q, f in files.items()},
                     bw, statistics.mean(cal.gate_positive), statistics.mean(cal.active))
    print(f"\nother processes during the kept measurements: at most {max(others):.2f} cores (median "
          f"{statistics.median(others):.2f}{'' if quiet.count_niced else ', niced processes not counted: autogroup nice '}"
          f"{'' if quiet.count_niced else autogroup_nice()}); waited {quiet.waited_s:.0f} s for quiet, "
          f"redid {quiet.redone} measurement(s)")
    print_report(args, argv, shape, cal, rows, types, llama, bandwidth, load, lib, llama_bench, llama_version,
                 {q: file_bytes(f[1]) for q, f in files.items()})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def make_rows(configs: list[Config], samples: dict[Config, Samples], llama: dict[str, Samples],
              fbytes: dict[str, tuple[FileBytes, FileBytes]], bw_gb_s: float, gate_pos: float,
              active: float) -> list[dict]:
    rows = []
    for phase in ("decode", "prefill"):
        for c in configs:
            s = samples[c]
            tok_s = median(getattr(s, phase))
            ref = median(getattr(llama[c.qtype], phase))
            measured = median(s.density)
            row = {"type": c.qtype, "mode": c.mode,
                   "density": c.density if c.mode == "predicted" else (1.0 if c.mode == "dense" else measured),
                   "phase": phase, "tok_s": tok_s, "llama_cpp_tok_s": ref,
                   "vs_llama_cpp": tok_s / ref if ref else None,
                   "density_measured": measured,
                   "file": "swiglu" if c.swiglu_file else "drelu",
                   "samples": getattr(s, phase)}
            if phase == "decode":
                fb = fbytes[c.qtype][1 if c.swiglu_file else 0]
                nbytes = fb.per_token(c.mode, measured, gate_pos, active)
                ideal = bw_gb_s * 1e9 / nbytes
                row |= {"bytes_per_token": int(nbytes), "roofline_tok_s": ideal, "roofline_share": tok_s / ideal}
            rows.append(row)
    return rows


def print_report(args, argv, shape: SynthShape, cal: Calibration, rows: list[dict], types: list[str],
                 llama: dict[str, Samples], bandwidth: list[float], load: list[float], lib: Path, llama_bench: Optional[Path],
                 llama_version: str, swiglu_bytes: dict[str, FileBytes]) -> None:
    bw = max(bandwidth)
    print(f"\ncommand: python bench/bench_decode.py {' '.join(argv)}")
    print(f"model: synthetic Mistral shape {shape.key()}; threads {args.threads}; {args.tokens} decode tokens, "
          f"{args.prompt}-token prefill; median of {args.repeats} interleaved round(s)")
    print(f"turbosparse: {lib}")
    if llama_bench is not None:
        print(f"llama.cpp: {llama_bench} {llama_version}")
    print(f"calibration ({cal.n_tokens} tokens): " + ", ".join(f"tau({d:.0%}) = {t:.4g}" for d, t in cal.taus.items())
          + f"; natural dReLU: gate>0 {statistics.mean(cal.gate_positive):.3f}, active {statistics.mean(cal.active):.3f}")
    print(f"read bandwidth ({args.threads} threads): {' / '.join(f'{b:.1f}' for b in bandwidth)} GB/s "
          f"(start / end); roofline uses {bw:.1f}; load average {' / '.join(f'{x:.2f}' for x in load)}\n")
    head = f"{'type':6} {'phase':8} {'engine / mode':24} {'density':>8} {'tok/s':>9} {'vs llama.cpp':>12} " \
           f"{'MB/token':>9} {'roofline':>9} {'share':>6}"
    print(head)
    print("-" * len(head))
    for q in types:
        for phase in ("decode", "prefill"):
            ref = median(getattr(llama[q], phase))
            if ref is not None:
                extra = ""
                if phase == "decode":
                    nb = swiglu_bytes[q].per_token("dense")
                    extra = f"{nb / 1e6:9.0f} {bw * 1e9 / nb:9.2f} {ref / (bw * 1e9 / nb):6.0%}"
                print(f"{q:6} {phase:8} {'llama.cpp (swiglu)':24} {1.0:8.3f} {ref:9.2f} {'1.00x':>12} {extra}")
            for r in (r for r in rows if r["type"] == q and r["phase"] == phase):
                label = ("ts " + r["mode"] + (" (swiglu file)" if r["file"] == "swiglu" else "")
                         + (f" {r['density']:.0%}" if r["mode"] == "predicted" else ""))
                vs = f"{r['vs_llama_cpp']:.2f}x" if r["vs_llama_cpp"] else "-"
                extra = ""
                if phase == "decode":
                    extra = f"{r['bytes_per_token'] / 1e6:9.0f} {r['roofline_tok_s']:9.2f} {r['roofline_share']:6.0%}"
                print(f"{q:6} {phase:8} {label:24} {r['density_measured']:8.3f} {r['tok_s']:9.2f} {vs:>12} {extra}")
        dense_bytes = swiglu_bytes[q].per_token("dense")
        ideal = ", ".join(f"{r['mode']}{' ' + format(r['density'], '.0%') if r['mode'] == 'predicted' else ''}"
                          f"{' (swiglu file)' if r['file'] == 'swiglu' else ''} {dense_bytes / r['bytes_per_token']:.2f}x"
                          for r in rows if r["type"] == q and r["phase"] == "decode")
        print(f"{q:6} ideal decode speed-ups over a dense read of the SwiGLU file (byte ratios): {ideal}\n")
    print("density: share of FFN neurons computed as the runtime reports it; MB/token: weight bytes one decoded token"
          " reads; roofline: bandwidth / MB per token; share: achieved / roofline.\n"
          "ts dense on the dReLU file: gate/up by ggml's mul_mat, down by the sparse down op, which skips the"
          " natural zeros; ts dense (swiglu file): the llama.cpp file itself, everything dense.")


if __name__ == "__main__":
    t0 = time.time()
    try:
        rc = main()
    except BenchError as e:
        log(f"error: {e}")
        rc = 1
    log(f"done in {time.time() - t0:.0f} s")
    sys.exit(rc)

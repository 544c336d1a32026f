#!/usr/bin/env python3
"""Decode and prefill speed of turbosparse (dense, predicted, exact, threshold) against llama.cpp and PowerInfer.

What it does, in one run:
 1. writes synthetic Mistral-7B-shaped checkpoints (n_embd 4096, n_ff 14336, 32 heads, 8 KV
    heads, vocab 32000, 8 layers by default, predictor rank 1024), one per natural dReLU
    density (--natural-densities: ~10% TurboSparse-Mistral-like, ~25% ReLU-LLaMA-like), each
    twice as tiny-HF folders that share one weights file (synth_model.py): a dReLU "bamboo"
    model with predictors and the same weights as a dense SwiGLU "mistral" model;
 2. calibrates the predictor threshold to 10% and 25% predicted density on real forward
    passes (calibrate.py: numpy forward, quantile of the predictor logits of all layers);
 3. makes the files: PowerInfer's own converter and quantize write its files (powerinfer.py),
    and turbosparse reads them imported by `convert-turbosparse --from-powerinfer`, as a user
    does, so both sparse engines read the same bytes (without PowerInfer: our converter's files);
    our converter writes the SwiGLU files for llama.cpp: plain llama.cpp files holding the same
    attention/FFN weights (llama.cpp cannot run dReLU, and a dense model of the same shape reads
    the same bytes per token, the paper's baseline too);
 4. measures, interleaved round by round with the same thread count, in two styles:
      api      turbosparse through its C API in this process (128-token prefill, decode from an
               empty cache), llama.cpp's llama-bench, PowerInfer's llama-bench when built;
      process  as a user runs them: a fresh ts-main, llama-completion and PowerInfer main
               process each (warm page cache), a ~128-token text prompt, then 64 tokens at
               temperature 0, read from each engine's own printed speeds (process_runs.py);
    medians over the rounds;
 5. prints a table with ratios to llama.cpp and to PowerInfer at the same predicted density,
    and the roofline: weight bytes each mode reads per token (from the files' tensor sizes and
    the measured densities) divided by a read bandwidth measured in the same run (roofline.py)
    gives an ideal tokens/s; the achieved share of it shows how close each engine is to the
    memory bound.

The threshold mode (SwiGLU, CATS; --threshold-sparsities) runs on the SwiGLU weights converted
with --sparse-ffn (ffn_down and ffn_down_t): per-layer cuts on |silu(gate)| for each target
sparsity from the runtime's histograms over a random-token forward pass (act_thresholds.py),
timed in the api style only (ts-main reads one set of cuts from the file), with its ratio to
our dense mode on the llama.cpp SwiGLU file ("vs ts dense") beside the ratio to llama.cpp.

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
from powerinfer import DEFAULT_DIR as PI_DEFAULT_DIR  # noqa: E402
from powerinfer import HOW_TO_BUILD as PI_HOW_TO_BUILD  # noqa: E402
from powerinfer import PowerInfer, find_powerinfer  # noqa: E402
from powerinfer import import_file as import_pi_file  # noqa: E402
from powerinfer import make_files as make_pi_files  # noqa: E402
from powerinfer import sparse_env as pi_sparse_env  # noqa: E402
from process_runs import run_llama_style, run_ts_main  # noqa: E402
from roofline import file_bytes, measure_bandwidth  # noqa: E402
from synth_model import WEIGHTS_SHARD, SynthShape, write_checkpoints  # noqa: E402
from ts_runtime import BenchError, Context, Model, Runtime, default_lib  # noqa: E402
from act_thresholds import threshold_cuts  # noqa: E402

# The llama.cpp baseline: llama-bench built from the llama.cpp sources vendored in the
# llama-cpp-python sdist, in a scratch folder outside this repository (never commit llama.cpp):
#   pip download --no-deps --no-binary :all: --no-build-isolation llama-cpp-python
#   cmake -S llama_cpp_python-*/vendor/llama.cpp -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
#   cmake --build build --target llama-bench
# (the full recipe is HOW_TO_BUILD in llama_bench.py, printed by --help).
REPO = Path(__file__).resolve().parents[1]
# --types: the weight types a run can compare; PowerInfer's files are made for PI_TYPES, and
# q4_k_m (llama.cpp's Q4_K_M mix) is our converter's file for llama.cpp and for turbosparse.
ALL_TYPES = ("q4_0", "f16", "q8_0", "q4_k_m")
PI_TYPES = ("q4_0", "f16", "q8_0")
TINY = dict(n_layer=2, n_embd=256, n_ff=1024, n_head=4, n_head_kv=2, n_vocab=1024, rank=64)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Config:
    """One turbosparse measurement: a file and an FFN mode (and a target density)."""
    qtype: str
    mode: str                  # dense | predicted | exact | threshold
    density: Optional[float]   # target predicted density (predicted), 1 - target sparsity (threshold)
    swiglu_file: bool = False  # dense mode on the llama.cpp file itself

    @property
    def label(self) -> str:
        if self.mode == "predicted":
            return f"predicted {self.density:.0%}"
        if self.mode == "threshold":
            return f"threshold {1 - self.density:.0%} sparse"
        return "dense (swiglu file)" if self.swiglu_file else self.mode


@dataclass
class Samples:
    decode: list[float] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)
    density: list[float] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_decode.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=HOW_TO_BUILD + "\n  cmake --build build -j2 --target llama-completion  # the process-style baseline\n\n"
        + PI_HOW_TO_BUILD + "\n\nThe report starts with the exact command; put it next to the table.")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/turbosparse-bench"),
                   help="where generated checkpoints and GGUF files live (reused; default %(default)s)")
    p.add_argument("--layers", type=int, default=8, help="number of layers (default %(default)s)")
    p.add_argument("--tokens", type=int, default=32,
                   help="decoded tokens per API measurement (default %(default)s)")
    p.add_argument("--gen-tokens", type=int, default=64,
                   help="generated tokens per process run, after the prompt (default %(default)s)")
    p.add_argument("--prompt", type=int, default=128, help="prefill prompt length (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines (default %(default)s)")
    p.add_argument("--types", default="q4_0,f16",
                   help="comma list of q4_0, f16, q8_0, q4_k_m (default %(default)s). q4_k_m: llama.cpp's Q4_K_M mix "
                        "written by our converter for both engines (PowerInfer's files are made for the others)")
    p.add_argument("--densities", default="0.10,0.25", help="predicted densities (default %(default)s)")
    p.add_argument("--threshold-sparsities", default="0.4,0.5",
                   help="target FFN sparsities of the threshold mode on the SwiGLU weights (api style only; "
                        "empty: skip; default %(default)s)")
    p.add_argument("--natural-densities", default="0.10,0.25",
                   help="natural dReLU densities of the synthetic models: ~10%% is TurboSparse-Mistral-like, ~25%% "
                        "ReLU-LLaMA-like (default %(default)s)")
    p.add_argument("--styles", default="api,process",
                   help="api: timed through the C API in this process; process: fresh ts-main / llama-completion / "
                        "PowerInfer main runs (default %(default)s)")
    p.add_argument("--calib-tokens", type=int, default=64, help="tokens of the calibration forward (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 round, 8 decode tokens, a 32-token prompt, 16 calibration tokens, q4_0 only, the 10%% "
                        "natural density only "
                        "(explicit options still win)")
    p.add_argument("--tiny", action="store_true",
                   help=f"a tiny model instead of the Mistral-7B shape ({TINY}); for tests")
    p.add_argument("--lib", type=Path,
                   help="libggml-sparse.so to time (default: $TS_LIB or $TURBOSPARSE_LIB, else the installed package's)")
    p.add_argument("--llama-bench", type=Path, metavar="PATH",
                   help="llama.cpp's llama-bench binary (default: /tmp/llamacpp/build/bin/llama-bench)")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp (ratios are then absent)")
    p.add_argument("--powerinfer", type=Path, metavar="DIR",
                   help=f"PowerInfer's source folder with its build/ (default {PI_DEFAULT_DIR}); timed when built")
    p.add_argument("--no-powerinfer", action="store_true",
                   help="skip PowerInfer (turbosparse then reads the files of its own converter)")
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
    for opt, value in (("--repeats", 1), ("--tokens", 8), ("--gen-tokens", 8), ("--prompt", 32),
                       ("--calib-tokens", 16), ("--types", "q4_0"), ("--natural-densities", "0.10")):
        if opt not in given:
            setattr(args, opt[2:].replace("-", "_"), value)


def convert(folder: Path, out: Path, qtype: str, extra: tuple[str, ...] = ()) -> Path:
    if out.is_file():
        return out
    log(f"converting {folder.name} -> {out.name}")
    tmp = out.with_suffix(".part")
    subprocess.run([sys.executable, str(REPO / "convert" / "convert-turbosparse.py"), str(folder),
                    "--outfile", str(tmp), "--outtype", qtype, "--quiet", "--force", *extra], check=True)
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


def prompt_file(root: Path, drelu_hf: Path, n_tokens: int) -> Path:
    """A text that the model's tokenizer turns into about n_tokens tokens (BOS included), for the
    process-style runs: every engine tokenises the same text with the same SentencePiece model."""
    from sentencepiece import SentencePieceProcessor

    path = root / f"prompt-{n_tokens}.txt"
    if path.is_file():
        return path
    sp = SentencePieceProcessor(model_file=str(drelu_hf / "tokenizer.model"))
    words = ("The quick brown fox jumps over the lazy dog while the river runs to the sea and "
             "a small bird sings in the tall green tree near the old stone house on the hill").split()
    text, i = "", 0
    while len(sp.encode(text)) + 1 < n_tokens:
        text += (" " if text else "") + words[i % len(words)]
        i += 1
    path.write_text(text)
    return path


@dataclass
class Group:
    """One (natural density, type): its files and every engine's samples, measured interleaved."""
    natural: float
    qtype: str
    ts_file: Path
    swiglu_file: Path
    pi_file: Optional[Path]
    configs: list[Config]
    sparse_swiglu_file: Optional[Path] = None  # the SwiGLU weights with ffn_down_t (threshold mode)
    cuts: dict[float, list[float]] = field(default_factory=dict)               # sparsity -> per-layer cuts
    ts: dict[tuple[str, Config], Samples] = field(default_factory=dict)        # (style, config)
    llama: dict[str, Samples] = field(default_factory=dict)                    # style
    powerinfer: dict[tuple[str, float], Samples] = field(default_factory=dict)  # (style, density)


    def path_of(self, c: Config) -> Path:
        if c.mode == "threshold":
            assert self.sparse_swiglu_file is not None
            return self.sparse_swiglu_file
        return self.swiglu_file if c.swiglu_file else self.ts_file


def make_configs(q: str, densities: list[float], swiglu_dense: bool, sparsities: list[float]) -> list[Config]:
    configs = [Config(q, "dense", None)] + [Config(q, "predicted", d) for d in densities] + [Config(q, "exact", None)]
    if swiglu_dense or sparsities:
        configs.append(Config(q, "dense", None, swiglu_file=True))
    configs += [Config(q, "threshold", 1.0 - s) for s in sparsities]
    return configs


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    apply_quick(args, argv)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in types if t not in ALL_TYPES]
    if unknown:
        log(f"--types: unknown type(s) {', '.join(unknown)} (known: {', '.join(ALL_TYPES)})")
        return 2
    densities = [float(d) for d in args.densities.split(",")]
    naturals = [float(d) for d in args.natural_densities.split(",")]
    sparsities = [float(s) for s in args.threshold_sparsities.split(",") if s.strip()]
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    if not set(styles) <= {"api", "process"}:
        log(f"--styles: unknown style in {args.styles!r} (api, process)")
        return 2
    dims = dict(TINY) if args.tiny else {}
    if not args.tiny or any(a.startswith("--layers") for a in argv):
        dims["n_layer"] = args.layers

    lib = args.lib or default_lib()
    if lib is None or not lib.is_file():
        log("no libggml-sparse.so: pip install . (or give --lib / TS_LIB)")
        return 2
    ts_main = lib.parent.parent / "bin" / "ts-main"
    if "process" in styles and not ts_main.is_file():
        log(f"no ts-main beside {lib} ({ts_main}): pip install . (or --styles api)")
        return 2
    llama_bench = llama_completion = None
    if not args.no_llama_cpp:
        llama_bench = find_llama_bench(args.llama_bench)
        llama_completion = (args.llama_bench or Path("/tmp/llamacpp/build/bin/llama-bench")).parent / "llama-completion"
        if llama_bench is None or ("process" in styles and not llama_completion.is_file()):
            log("llama.cpp's llama-bench / llama-completion not found (give --llama-bench PATH or --no-llama-cpp). "
                + HOW_TO_BUILD)
            return 2
    pi = None
    if not args.no_powerinfer:
        pi = find_powerinfer(args.powerinfer)
        if pi is None:
            log(f"PowerInfer not found in {args.powerinfer or PI_DEFAULT_DIR}: timing without it "
                "(give --powerinfer DIR; recipe in --help)")

    groups: list[Group] = []
    cals: dict[float, Calibration] = {}
    prompts: dict[float, Path] = {}
    for natural in naturals:
        shape = SynthShape(seed=args.seed, natural_density=natural, **dims)
        root = args.workdir / shape.key()
        drelu_hf, swiglu_hf = write_checkpoints(root, shape, log)
        cals[natural] = get_calibration(root, drelu_hf, densities, args.calib_tokens)
        prompts[natural] = prompt_file(root, drelu_hf, args.prompt)
        pi_types = [q for q in types if q in PI_TYPES]
        pi_files = (make_pi_files(pi, root, drelu_hf, WEIGHTS_SHARD, shape.n_layer, pi_types, log)
                    if pi is not None and pi_types else {})
        for q in types:
            swiglu = convert(swiglu_hf, root / f"swiglu-{q}.gguf", q)
            if q in pi_files:  # turbosparse reads PowerInfer's bytes, as a user who imports them
                ts_file = import_pi_file(REPO, pi_files[q], root / f"ts-from-powerinfer-{q}.gguf", log)
            else:
                ts_file = convert(drelu_hf, root / f"drelu-{q}.gguf", q)
            sparse_swiglu = (convert(swiglu_hf, root / f"swiglu-sparse-ffn-{q}.gguf", q, ("--sparse-ffn",))
                             if sparsities else None)
            groups.append(Group(natural, q, ts_file, swiglu, pi_files.get(q),
                                make_configs(q, densities, not args.no_swiglu_dense, sparsities), sparse_swiglu))
    if args.prepare_only:
        log(f"files ready in {args.workdir}")
        return 0

    rt = Runtime(lib)
    n_ctx = max(args.prompt, args.tokens + 1) + 16
    n_ctx_process = args.prompt + args.gen_tokens + 64
    rng = random.Random(args.seed)
    quiet = Quiet(not args.no_wait_quiet, args.max_others, log=log)
    others: list[float] = []
    llama_version = ""

    def measured(label: str, fn):
        result, busy = quiet.measure(label, fn)
        others.append(busy)
        return result

    load = [os.getloadavg()[0]]
    bandwidth = [measured("bandwidth", lambda: measure_bandwidth(args.threads))]
    log(f"read bandwidth, {args.threads} threads: {bandwidth[0]:.1f} GB/s; load average {load[0]:.2f}")
    # One group at a time (its files fit in the page cache together), its rounds interleaved.
    for g in groups:
        cal = cals[g.natural]
        n_vocab = SynthShape(natural_density=g.natural, **dims).n_vocab
        # One model per file stays loaded (mmap) for the group; a context lives for one
        # measurement only: every context owns a ggml thread pool, and an idle pool beside the
        # measured one slowed decoding ~4x on a 2-core machine.
        models: dict[Path, Model] = {}
        if "api" in styles:
            for c in g.configs:
                path = g.path_of(c)
                if path not in models:
                    models[path] = Model(rt, path, use_mmap=not args.no_mmap)
            if g.sparse_swiglu_file is not None:
                g.cuts = threshold_cuts(models[g.sparse_swiglu_file], sparsities, args.calib_tokens, args.threads)
        tag = f"natural {g.natural:.0%} {g.qtype}"
        for r in range(args.repeats):
            log(f"{tag}: round {r + 1}/{args.repeats}")
            for c in g.configs:
                path = g.path_of(c)
                tau = cal.taus[c.density] if c.mode == "predicted" else None
                cuts = g.cuts.get(round(1.0 - c.density, 6)) if c.mode == "threshold" else None
                if "api" in styles:
                    prompt = [rng.randrange(3, n_vocab) for _ in range(args.prompt)]
                    gen = [rng.randrange(3, n_vocab) for _ in range(args.tokens)]

                    def one(c: Config = c, path: Path = path, tau=tau, prompt=prompt, gen=gen, cuts=cuts):
                        ctx = Context(models[path], c.mode, args.threads, n_ctx, tau, act_thresholds=cuts)
                        try:
                            ctx.time_prefill(prompt)  # warm-up, as llama-bench's: allocates the batch graph
                            return ctx.time_prefill(prompt), ctx.time_decode(gen)
                        finally:
                            ctx.close()

                    p, d = measured(f"{tag} {c.label} api", one)
                    s = g.ts.setdefault(("api", c), Samples())
                    s.decode.append(d.tok_s), s.prefill.append(p.tok_s), s.density.append(d.density)
                    log(f"  {g.qtype} {c.label} (api): decode {d.tok_s:.2f} tok/s (density {d.density:.3f}), "
                        f"prefill {p.tok_s:.1f} tok/s")
                if "process" in styles and c.mode != "threshold":
                    t = measured(f"{tag} {c.label} ts-main", lambda c=c, path=path, tau=tau: run_ts_main(
                        ts_main, path, prompts[g.natural], args.gen_tokens, args.threads, n_ctx_process, c.mode, tau))
                    s = g.ts.setdefault(("process", c), Samples())
                    s.decode.append(t.gen_tok_s), s.prefill.append(t.prompt_tok_s), s.density.append(t.density)
                    log(f"  {g.qtype} {c.label} (ts-main): generation {t.gen_tok_s:.2f} tok/s (density "
                        f"{t.density:.3f}), prompt {t.prompt_tok_s:.1f} tok/s ({t.n_prompt} tokens)")
            if llama_bench is not None:
                if "api" in styles:
                    res = measured(f"{tag} llama-bench", lambda: run_llama_bench(
                        llama_bench, g.swiglu_file, args.threads, args.tokens, args.prompt))
                    llama_version = res.version
                    if res.decode_tok_s is None or res.prefill_tok_s is None:
                        raise BenchError("llama-bench gave no decode or prefill result")
                    s = g.llama.setdefault("api", Samples())
                    s.decode.append(res.decode_tok_s), s.prefill.append(res.prefill_tok_s)
                    log(f"  {g.qtype} llama-bench: decode {res.decode_tok_s:.2f}, prefill {res.prefill_tok_s:.1f}")
                if "process" in styles:
                    t = measured(f"{tag} llama-completion", lambda: run_llama_style(
                        llama_completion, g.swiglu_file, prompts[g.natural], args.gen_tokens, args.threads,
                        n_ctx_process, extra=("-no-cnv",)))
                    s = g.llama.setdefault("process", Samples())
                    s.decode.append(t.gen_tok_s), s.prefill.append(t.prompt_tok_s)
                    log(f"  {g.qtype} llama-completion: generation {t.gen_tok_s:.2f}, prompt {t.prompt_tok_s:.1f} "
                        f"({t.n_prompt} tokens)")
            if g.pi_file is not None:
                for d in densities:
                    env = pi_sparse_env(cal.taus[d])
                    if "api" in styles and pi is not None and pi.bench.is_file():
                        res = measured(f"{tag} PowerInfer llama-bench {d:.0%}", lambda env=env: run_llama_bench(
                            pi.bench, g.pi_file, args.threads, args.tokens, args.prompt, env=env,
                            extra=("-ngl", "0")))  # its sparse path refuses the default -ngl 99
                        s = g.powerinfer.setdefault(("api", d), Samples())
                        s.decode.append(res.decode_tok_s), s.prefill.append(res.prefill_tok_s)
                        log(f"  {g.qtype} PowerInfer {d:.0%} (llama-bench): decode {res.decode_tok_s:.2f}, "
                            f"prefill {res.prefill_tok_s:.1f}")
                    if "process" in styles:
                        t = measured(f"{tag} PowerInfer main {d:.0%}", lambda env=env: run_llama_style(
                            pi.main, g.pi_file, prompts[g.natural], args.gen_tokens, args.threads, n_ctx_process,
                            env=env, extra=("--log-disable",)))  # else it writes main.log into the cwd
                        s = g.powerinfer.setdefault(("process", d), Samples())
                        s.decode.append(t.gen_tok_s), s.prefill.append(t.prompt_tok_s)
                        log(f"  {g.qtype} PowerInfer {d:.0%} (main): generation {t.gen_tok_s:.2f}, prompt "
                            f"{t.prompt_tok_s:.1f} ({t.n_prompt} tokens)")
        for m in models.values():
            m.close()
    bandwidth.append(measured("bandwidth", lambda: measure_bandwidth(args.threads)))
    load.append(os.getloadavg()[0])
    if max(others) > args.max_others:
        log(f"warning: other processes used up to {max(others):.2f} cores during kept measurements; "
            "those numbers are not trustworthy")

    rows = make_rows(groups, styles, cals, max(bandwidth))
    print(f"\nother processes during the kept measurements: at most {max(others):.2f} cores (median "
          f"{statistics.median(others):.2f}{'' if quiet.count_niced else ', niced processes not counted: autogroup nice '}"
          f"{'' if quiet.count_niced else autogroup_nice()}); waited {quiet.waited_s:.0f} s for quiet, "
          f"redid {quiet.redone} measurement(s)")
    print_report(args, argv, groups, styles, cals, rows, bandwidth, load, lib, llama_bench, llama_version, pi)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def make_rows(groups: list[Group], styles: list[str], cals: dict[float, Calibration], bw_gb_s: float) -> list[dict]:
    rows = []
    for g in groups:
        cal = cals[g.natural]
        fb_ts, fb_swiglu = file_bytes(g.ts_file), file_bytes(g.swiglu_file)
        fb_sparse = file_bytes(g.sparse_swiglu_file) if g.sparse_swiglu_file is not None else None
        for style in styles:
            for phase in ("decode", "prefill"):
                ref = median(getattr(g.llama.get(style, Samples()), phase))
                ts_dense = [median(getattr(g.ts[(style, c)], phase)) for c in g.configs
                            if c.swiglu_file and (style, c) in g.ts]
                for c in g.configs:
                    if (style, c) not in g.ts:  # threshold configs in the process style
                        continue
                    s = g.ts[(style, c)]
                    tok_s = median(getattr(s, phase))
                    pi = (median(getattr(g.powerinfer.get((style, c.density), Samples()), phase))
                          if c.mode == "predicted" else None)
                    measured = median(s.density)
                    row = {"type": c.qtype, "mode": c.mode, "style": style, "natural_density": g.natural,
                           "density": (c.density if c.mode in ("predicted", "threshold")
                                       else (1.0 if c.mode == "dense" else measured)),
                           "phase": phase, "tok_s": tok_s, "llama_cpp_tok_s": ref,
                           "vs_llama_cpp": tok_s / ref if ref else None,
                           "powerinfer_tok_s": pi, "vs_powerinfer": tok_s / pi if pi else None,
                           "density_measured": measured,
                           "vs_ts_dense": (tok_s / ts_dense[0] if c.mode == "threshold" and ts_dense and ts_dense[0]
                                           else None),
                           "file": ("swiglu-sparse-ffn" if c.mode == "threshold" else "swiglu" if c.swiglu_file
                                    else ("powerinfer-import" if g.pi_file else "drelu")),
                           "samples": getattr(s, phase)}
                    if phase == "decode":
                        fb = fb_sparse if c.mode == "threshold" and fb_sparse else fb_swiglu if c.swiglu_file else fb_ts
                        nbytes = fb.per_token(c.mode, measured, statistics.mean(cal.gate_positive),
                                              statistics.mean(cal.active))
                        ideal = bw_gb_s * 1e9 / nbytes
                        row |= {"bytes_per_token": int(nbytes), "roofline_tok_s": ideal,
                                "roofline_share": tok_s / ideal}
                    rows.append(row)
    return rows


def print_report(args, argv, groups: list[Group], styles: list[str], cals: dict[float, Calibration],
                 rows: list[dict], bandwidth: list[float], load: list[float], lib: Path,
                 llama_bench: Optional[Path], llama_version: str, pi: Optional[PowerInfer]) -> None:
    bw = max(bandwidth)
    print(f"\ncommand: python bench/bench_decode.py {' '.join(argv)}")
    print(f"model: synthetic Mistral shape, {groups[0].ts_file.parent.name.split('-D')[0]}; threads {args.threads}; "
          f"median of {args.repeats} interleaved round(s)")
    print(f"styles: api = through the C API in this process, {args.prompt}-token prefill and {args.tokens} decoded "
          f"tokens from an empty cache (llama.cpp: llama-bench); process = a fresh ts-main / llama-completion / "
          f"PowerInfer main, a {args.prompt}-token text prompt then {args.gen_tokens} generated tokens, each engine's "
          f"own printed speeds")
    print(f"turbosparse: {lib}")
    if llama_bench is not None:
        print(f"llama.cpp: {llama_bench.parent} {llama_version}")
    print(f"PowerInfer: {pi.root if pi else 'not timed (not built; see --help)'}"
          + ("; its files from its own convert.py + quantize, imported with convert-turbosparse --from-powerinfer; "
             "threshold via LLAMA_SPARSE_PRED_THRESHOLD = the same tau on the same predictor bytes" if pi else ""))
    for natural, cal in cals.items():
        print(f"natural {natural:.0%} calibration ({cal.n_tokens} tokens): "
              + ", ".join(f"tau({d:.0%}) = {t:.4g}" for d, t in cal.taus.items())
              + f"; dReLU: gate>0 {statistics.mean(cal.gate_positive):.3f}, active {statistics.mean(cal.active):.3f}")
    print(f"read bandwidth ({args.threads} threads): {' / '.join(f'{b:.1f}' for b in bandwidth)} GB/s "
          f"(start / end); roofline uses {bw:.1f}; load average {' / '.join(f'{x:.2f}' for x in load)}\n")
    head = (f"{'natural':7} {'type':5} {'style':7} {'phase':7} {'engine / mode':42} {'density':>7} {'tok/s':>8} "
            f"{'vs llama':>8} {'vs PI':>6} {'MB/tok':>7} {'roofline':>8} {'share':>5}")
    print(head)
    print("-" * len(head))
    for g in groups:
        for style in styles:
            for phase in ("decode", "prefill"):
                pre = f"{g.natural:<7.0%} {g.qtype:5} {style:7} {phase:7}"
                ref = median(getattr(g.llama.get(style, Samples()), phase))
                if ref is not None:
                    print(f"{pre} {'llama.cpp (swiglu)':42} {1.0:7.3f} {ref:8.2f} {'1.00x':>8}")
                for (st, d), s in g.powerinfer.items():
                    v = median(getattr(s, phase))
                    if st == style and v is not None:
                        vs = f"{v / ref:.2f}x" if ref else "-"
                        print(f"{pre} {'PowerInfer ' + format(d, '.0%'):42} {d:7.3f} {v:8.2f} {vs:>8}")
                for r in rows:
                    if (r["natural_density"], r["type"], r["style"], r["phase"]) != (g.natural, g.qtype, style, phase):
                        continue
                    label = ("ts " + r["mode"] + (" (swiglu file)" if r["file"] == "swiglu" else "")
                             + (f" {r['density']:.0%}" if r["mode"] == "predicted" else "")
                             + (f" {1 - r['density']:.0%} sparse" if r["mode"] == "threshold" else ""))
                    if r["vs_ts_dense"]:
                        label = label + f" ({r['vs_ts_dense']:.2f}x ts dense)"
                    vs = f"{r['vs_llama_cpp']:.2f}x" if r["vs_llama_cpp"] else "-"
                    vp = f"{r['vs_powerinfer']:.2f}x" if r["vs_powerinfer"] else "-"
                    extra = ""
                    if phase == "decode":
                        extra = f" {r['bytes_per_token'] / 1e6:7.0f} {r['roofline_tok_s']:8.2f} {r['roofline_share']:5.0%}"
                    print(f"{pre} {label:42} {r['density_measured']:7.3f} {r['tok_s']:8.2f} {vs:>8} {vp:>6}{extra}")
        dense_bytes = file_bytes(g.swiglu_file).per_token("dense")
        ideal = ", ".join(f"{r['mode']}{' ' + format(r['density'], '.0%') if r['mode'] in ('predicted', 'threshold') else ''}"
                          f"{' (swiglu file)' if r['file'] == 'swiglu' else ''} {dense_bytes / r['bytes_per_token']:.2f}x"
                          for r in rows if (r["natural_density"], r["type"], r["phase"]) == (g.natural, g.qtype, "decode")
                          and r["style"] == styles[0])
        print(f"natural {g.natural:.0%} {g.qtype}: ideal decode speed-ups over a dense read of the SwiGLU file "
              f"(byte ratios): {ideal}\n")
    print("density: share of FFN neurons computed as the runtime reports it; MB/tok: weight bytes one decoded token"
          " reads; roofline: bandwidth / MB per token; share: achieved / roofline.\n"
          "ts dense on the dReLU file: gate/up dense, down by the sparse down op, which skips the natural zeros;"
          " ts dense (swiglu file): the llama.cpp file itself, everything dense. ts threshold N% sparse: the SwiGLU"
          " weights with ffn_down_t (--sparse-ffn), CATS cuts skipping N% of the neurons of every layer (api only);"
          " (Kx ts dense): its decode/prefill speed over ts dense (swiglu file) in the same style.")


if __name__ == "__main__":
    t0 = time.time()
    try:
        rc = main()
    except BenchError as e:
        log(f"error: {e}")
        rc = 1
    log(f"done in {time.time() - t0:.0f} s")
    sys.exit(rc)

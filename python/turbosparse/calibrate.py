"""ts-calibrate-sparsity: per-layer activation thresholds (CATS) for a SwiGLU model.

Runs the model over calibration text in the threshold FFN mode with a histogram of
|silu(gate)| per layer (kept by the runtime's sparse node), picks for every layer the cut on
|silu(gate)| below which the target share of its neurons falls, writes the cuts into the file
(turbosparse.act_threshold.values; the neuron-major down projection ffn_down_t is added first
when the file has none) and reports the sparsity reached on held-out text, per layer.

Uniform allocation: every layer gets the target. With --passes 2 (the default) the second
pass measures the activations with the first pass's cuts in place, so each layer's cut is
taken on the inputs it will see once the layers before it are sparse.

The last --held-out share of the text's tokens is never seen by the calibration.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

MIN_CAL_TOKENS = 256   # below this a layer's cut rests on too few tokens to mean much
MIN_HELD_TOKENS = 32


class CalibrateError(Exception):
    pass


@dataclass
class Report:
    path: Path
    thresholds: list[float]
    calibration_sparsity: list[float]  # per layer, on the calibration text (last pass)
    held_out_sparsity: list[float]     # per layer, on the held-out text
    n_cal_tokens: int
    n_held_tokens: int

    @property
    def mean_held_out(self) -> float:
        return float(np.mean(self.held_out_sparsity))


def cut_for_target(hist: np.ndarray, target: float, edge: Callable[[int], float]) -> tuple[float, float]:
    """(threshold, share below it) for one layer's histogram: the bin edge whose share of
    values below it is nearest the target (values below the edge are skipped)."""
    total = int(hist.sum())
    if total == 0:
        raise CalibrateError("a layer saw no activations")
    below = np.concatenate([[0], np.cumsum(hist)]) / total  # below[b] = share with bin < b
    b = int(np.argmin(np.abs(below - target)))
    if target <= 0.0:
        return -math.inf, 0.0
    return edge(b), float(below[b])


def default_outfile(path: Path) -> Path:
    """MODEL itself when it already holds ffn_down_t (one of ours); else a copy beside it,
    <stem>.threshold.gguf: adding ffn_down_t makes a file llama.cpp refuses (it counts the
    tensors it expects), and a llama.cpp file should stay one."""
    from gguf import GGUFReader

    from .convert.sparse_ffn import down_layout
    try:
        layout = down_layout(GGUFReader(path))
    except (ValueError, OSError):
        return path  # not a GGUF: calibrate() reports it
    return path if layout != "standard" else path.with_name(path.stem + ".threshold.gguf")


def split_tokens(tokens: list[int], held_out: float) -> tuple[list[int], list[int]]:
    n_held = int(round(len(tokens) * held_out))
    return tokens[:len(tokens) - n_held], tokens[len(tokens) - n_held:]


def _eval_chunks(model, chunks: Sequence[np.ndarray], bar) -> None:  # type: ignore[no-untyped-def]
    for c in chunks:
        model.eval(c.tolist())
        if bar is not None:
            bar.update(1)


def calibrate(path: Path, target: float, text: str, *, outfile: Optional[Path] = None, held_out: float = 0.2,
              n_ctx: int = 256, n_threads: Optional[int] = None, passes: int = 2, down_type: Optional[str] = None,
              force: bool = False, progress: bool = True) -> Report:
    from gguf import GGUFReader
    from tqdm import tqdm

    from .convert.errors import ConvertError
    from .convert.sparse_ffn import check_swiglu, down_layout, rewrite
    from .model import Model, act_hist_edge
    from .train.corpus import chunk

    if not 0.0 <= target < 1.0:
        raise CalibrateError(f"--target {target}: a share of neurons to skip, 0 <= target < 1")
    if not 0.0 < held_out < 1.0:
        raise CalibrateError(f"--held-out {held_out}: a share of the text, strictly between 0 and 1")
    if passes < 1:
        raise CalibrateError(f"--passes {passes}: at least 1")
    if n_ctx < 16:
        raise CalibrateError(f"--ctx-size {n_ctx}: at least 16")
    out = Path(outfile) if outfile is not None else default_outfile(Path(path))
    if out.exists() and not force and out.resolve() != Path(path).resolve():
        raise CalibrateError(f"{out} exists; pass --force to overwrite it")
    try:
        reader = GGUFReader(path)
        n_layer = check_swiglu(reader, Path(path))
        layout = down_layout(reader)
    except (ConvertError, ValueError, OSError) as e:
        raise CalibrateError(str(e)) from e
    del reader

    with Model(path, n_ctx=8, n_threads=1, ffn_mode="dense") as m:
        tokens = m.tokenize(text, add_bos=False, special=False)
        bos = m.token_bos()
    cal, held = split_tokens(tokens, held_out)
    if len(cal) < MIN_CAL_TOKENS or len(held) < MIN_HELD_TOKENS:
        raise CalibrateError(f"the text holds {len(tokens)} tokens: {len(cal)} for calibration and {len(held)} "
                             f"held out; need at least {MIN_CAL_TOKENS} and {MIN_HELD_TOKENS} (give more text)")
    bos = bos if bos >= 0 else cal[0]
    cal_chunks, held_chunks = chunk(cal, bos, n_ctx), chunk(held, bos, n_ctx)

    work_dir = out.parent if str(out.parent) else Path(".")
    tmp: Optional[Path] = None
    try:
        src = Path(path)
        if layout == "standard":  # add ffn_down_t first: the threshold mode reads it
            fd, name = tempfile.mkstemp(prefix=f".{out.name}.down_t.", suffix=".gguf", dir=work_dir)
            os.close(fd)
            tmp = Path(name)
            rewrite(src, tmp, down_type=down_type, force=True)
            src = tmp
        bar = tqdm(total=passes * len(cal_chunks) + len(held_chunks), unit="chunk", desc="calibrating",
                   file=sys.stderr, dynamic_ncols=True, disable=not progress)
        thresholds = [-math.inf] * n_layer
        shares = [0.0] * n_layer
        with Model(src, n_ctx=n_ctx, n_threads=n_threads, ffn_mode="threshold", collect_act_hist=True) as model:
            for _ in range(passes):
                model.reset()
                model.set_act_thresholds(thresholds)
                _eval_chunks(model, cal_chunks, bar)
                hist = model.act_histograms()
                picked = [cut_for_target(hist[il], target, act_hist_edge) for il in range(n_layer)]
                thresholds = [t for t, _ in picked]
                shares = [s for _, s in picked]
        bar.set_description("writing")
        rewrite(src, out, thresholds=thresholds, target=target, force=True)
        bar.set_description("held-out")
        with Model(out, n_ctx=n_ctx, n_threads=n_threads, ffn_mode="threshold") as model:
            _eval_chunks(model, held_chunks, bar)
            held_sparsity = [1.0 - d for d in model.layer_density()]
        bar.close()
    except ConvertError as e:
        raise CalibrateError(str(e)) from e
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return Report(out, thresholds, shares, held_sparsity, sum(len(c) for c in cal_chunks),
                  sum(len(c) for c in held_chunks))


def print_report(r: Report, target: float) -> None:
    print(f"wrote {r.path}")
    print(f"calibration tokens {r.n_cal_tokens}, held-out tokens {r.n_held_tokens}, target sparsity {target:.3f}")
    print(f"{'layer':>5} {'threshold':>12} {'calibration':>12} {'held-out':>10}")
    for il, (t, c, h) in enumerate(zip(r.thresholds, r.calibration_sparsity, r.held_out_sparsity)):
        print(f"{il:5d} {t:12.5g} {c:12.4f} {h:10.4f}")
    print(f"{'mean':>5} {'':12} {float(np.mean(r.calibration_sparsity)):12.4f} {r.mean_held_out:10.4f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ts-calibrate-sparsity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="then run it sparse: ts-main -m MODEL --ffn-mode threshold (auto picks it)")
    p.add_argument("model", type=Path, help="SwiGLU GGUF model (a llama.cpp file or one of ours)")
    p.add_argument("--target", type=float, required=True, help="share of FFN neurons to skip per layer, e.g. 0.4")
    p.add_argument("--text", type=Path, required=True, help="UTF-8 calibration text")
    p.add_argument("--outfile", "-o", type=Path,
                   help="write here (default: replace MODEL atomically when it already has ffn_down_t, else "
                        "MODEL_STEM.threshold.gguf beside it: llama.cpp refuses files with the added tensors)")
    p.add_argument("--held-out", type=float, default=0.2, help="share of the text kept for the report (default 0.2)")
    p.add_argument("--ctx-size", "-c", type=int, default=256, help="tokens per chunk (default 256)")
    p.add_argument("--threads", "-t", type=int, help="threads (default: the online CPUs)")
    p.add_argument("--passes", type=int, default=2, help="calibration passes (default 2, see above)")
    p.add_argument("--down-type", choices=("f32", "f16", "bf16", "q8_0", "q4_0"),
                   help="type of the added ffn_down_t (default: ffn_down's for f32/f16/bf16/q8_0, else q8_0; "
                        "requantised after transposing)")
    p.add_argument("--force", action="store_true", help="overwrite --outfile if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        text = args.text.read_text(encoding="utf-8")
    except OSError as e:
        raise CalibrateError(f"{args.text}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise CalibrateError(f"{args.text}: not UTF-8 text ({e})") from e
    if not args.model.is_file():
        raise CalibrateError(f"{args.model}: no such file")
    report = calibrate(args.model, args.target, text, outfile=args.outfile, held_out=args.held_out,
                       n_ctx=args.ctx_size, n_threads=args.threads, passes=args.passes, down_type=args.down_type,
                       force=args.force, progress=not args.quiet)
    print_report(report, args.target)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .errors import TurboSparseError

    try:
        return run(argv)
    except (CalibrateError, TurboSparseError) as e:
        print(f"ts-calibrate-sparsity: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ts-calibrate-sparsity: interrupted; the model file is unchanged", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

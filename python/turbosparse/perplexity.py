"""ts-perplexity: perplexity of a text file through the runtime, in the dense, exact or
predicted FFN mode, with the share of FFN neurons computed, the true active share and the
predictor's recall.

The text is tokenized whole (special-token texts become their tokens) and cut into chunks of
--ctx-size tokens: BOS, then the next ctx-size - 1 tokens of the text. Each chunk is evaluated
from an empty cache and every next-token prediction in it is scored, so each text token is
scored exactly once.

Figures:
  ppl            exp(mean negative log-likelihood), from the runtime's logits
  computed       share of FFN neurons the runtime computed (its ffn_density statistic)
  true_density   share of neurons with a_i != 0 (SPEC §1)                        } numpy forward
  recall         share of truly active neurons the predictor selected (SPEC §2) } of the same
  pred_density   share the predictor selected                                    } file and chunks
The last three come from a float32 numpy forward pass of the same GGUF over the same chunks,
following the mode's own computation (predicted mode feeds the predicted FFN forward);
--no-recall skips it (it costs about one dense pass).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

MODES = ("dense", "exact", "predicted", "threshold")


@dataclass
class LayerFigures:
    true_density: float
    recall: Optional[float]
    predicted_density: Optional[float]


@dataclass
class ModeResult:
    mode: str
    perplexity: float
    n_tokens: int                 # scored tokens
    computed_share: float         # runtime ffn_density
    seconds: float
    true_density: Optional[float] = None
    recall: Optional[float] = None
    predicted_density: Optional[float] = None
    layers: list[LayerFigures] = field(default_factory=list)


class PerplexityError(Exception):
    pass


def runtime_nll(path: str, chunks: Sequence[np.ndarray], mode: str, n_threads: Optional[int],
                threshold: Optional[float]) -> tuple[np.ndarray, float, float, list[float]]:
    """(NLL of every scored token, computed share, seconds, per-layer computed share in the
    threshold mode, else []) through turbosparse.Model."""
    from .model import Model
    from .train.forward import log_softmax_nll

    n_ctx = max(len(c) for c in chunks)
    out = []
    start = time.monotonic()
    with Model(path, n_ctx=n_ctx, n_threads=n_threads, ffn_mode=mode, threshold=threshold) as model:
        for c in chunks:
            if len(c) < 2:
                continue
            logits = model.eval(c.tolist())
            out.append(log_softmax_nll(logits[:-1], c[1:]))
        share = model.stats.ffn_density
        layers = model.layer_density() if model.ffn_mode == "threshold" else []
    return np.concatenate(out), share, time.monotonic() - start, layers


def numpy_figures(path: str, chunks: Sequence[np.ndarray], mode: str, threshold: Optional[float]) -> list[LayerFigures]:
    from .train.forward import LayerObservation, LayerwiseForward
    from .train.weights import GGUFModel

    src = GGUFModel(Path(path))
    n_layer = src.shape.n_layer
    active = np.zeros(n_layer, dtype=np.int64)
    hit = np.zeros(n_layer, dtype=np.int64)
    chosen = np.zeros(n_layer, dtype=np.int64)
    total = np.zeros(n_layer, dtype=np.int64)

    def observe(obs: LayerObservation) -> None:
        active[obs.layer] += int(obs.active.sum())
        total[obs.layer] += obs.active.size
        if obs.predicted is not None:
            hit[obs.layer] += int((obs.active & obs.predicted).sum())
            chosen[obs.layer] += int(obs.predicted.sum())

    with tempfile.TemporaryDirectory(prefix="ts-ppl-") as tmp:
        fwd = LayerwiseForward(src, chunks, Path(tmp))
        fwd.run("predicted" if mode == "predicted" else "dense", tau=threshold, observe=observe)
    has_pred = src.has_predictor
    return [LayerFigures(float(active[i] / total[i]),
                         float(hit[i] / active[i]) if has_pred and active[i] else None,
                         float(chosen[i] / total[i]) if has_pred else None) for i in range(n_layer)]


def evaluate(path: str, text: str, mode: str, n_ctx: int, n_threads: Optional[int] = None,
             threshold: Optional[float] = None, max_chunks: Optional[int] = None,
             with_recall: bool = True) -> ModeResult:
    from .model import Model
    from .train.corpus import chunk

    with Model(path, n_ctx=8, n_threads=1) as tok_model:
        tokens = tok_model.tokenize(text, add_bos=False, special=True)
        bos = tok_model.token_bos()
        sparse = tok_model.info.get("ffn_kind") in (1, 2)  # enum ts_ffn_kind: reglu, drelu
        if mode == "auto":
            mode = tok_model.ffn_mode
    if not tokens:
        raise PerplexityError("the text holds no tokens")
    chunks = chunk(tokens, bos, n_ctx)
    if max_chunks is not None:
        chunks = chunks[:max_chunks]
    nll, share, seconds, layer_share = runtime_nll(path, chunks, mode, n_threads, threshold)
    result = ModeResult(mode, float(math.exp(nll.mean())), int(nll.size), share, seconds)
    if layer_share:  # threshold mode: the runtime's own per-layer counts (what was computed is all there is)
        result.layers = [LayerFigures(d, None, None) for d in layer_share]
        result.true_density = share
    if with_recall and sparse:  # a SwiGLU FFN has no zeros to count and no predictor
        layers = numpy_figures(path, chunks, mode, threshold)
        result.layers = layers
        result.true_density = float(np.mean([f.true_density for f in layers]))
        if layers and layers[0].recall is not None:
            result.recall = float(np.mean([f.recall for f in layers if f.recall is not None]))
            result.predicted_density = float(np.mean([f.predicted_density for f in layers
                                                      if f.predicted_density is not None]))
    return result


def _fmt(v: Optional[float], width: int = 12) -> str:
    return f"{v:{width}.4f}" if v is not None else f"{'-':>{width}}"


def print_results(results: Sequence[ModeResult], per_layer: bool) -> None:
    print(f"{'mode':<10} {'ppl':>10} {'tokens':>8} {'computed':>10} {'true_density':>12} {'recall':>8} "
          f"{'pred_density':>12}")
    for r in results:
        print(f"{r.mode:<10} {r.perplexity:10.4f} {r.n_tokens:8d} {r.computed_share:10.4f} {_fmt(r.true_density)} "
              f"{_fmt(r.recall, 8)} {_fmt(r.predicted_density)}")
    if per_layer:
        for r in results:
            if not r.layers:
                continue
            print(f"\n{r.mode}: layer  true_density  recall  pred_density")
            for i, f in enumerate(r.layers):
                print(f"{'':{len(r.mode)}}  {i:5d}  {f.true_density:12.4f}  {_fmt(f.recall, 6)}  {_fmt(f.predicted_density)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ts-perplexity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", help="GGUF model (default: the bundled model)")
    p.add_argument("-f", "--file", required=True, type=Path, help="UTF-8 text file to score")
    p.add_argument("-c", "--ctx-size", type=int, default=256, help="tokens per chunk, BOS included (default 256)")
    p.add_argument("-t", "--threads", type=int, help="threads (default: the online CPUs)")
    p.add_argument("--ffn-mode", default="all", choices=("all", "auto") + MODES,
                   help="FFN mode; all = dense, exact and predicted (predicted only when the file has predictors), "
                        "or dense and threshold for a SwiGLU file calibrated by ts-calibrate-sparsity")
    p.add_argument("--threshold", type=float, help="predictor logit threshold (default: the file's)")
    p.add_argument("--chunks", type=int, help="score at most this many chunks")
    p.add_argument("--no-recall", action="store_true", help="skip the numpy pass (true density, recall)")
    p.add_argument("--per-layer", action="store_true", help="also print true density and recall per layer")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    return p


def run(argv: Optional[Sequence[str]] = None) -> int:
    from .model import Model, default_model_path

    args = build_parser().parse_args(argv)
    if args.ctx_size < 2:
        raise PerplexityError(f"--ctx-size {args.ctx_size}: at least 2")
    if args.chunks is not None and args.chunks < 1:
        raise PerplexityError(f"--chunks {args.chunks}: at least 1")
    path = args.model or str(default_model_path())
    try:
        text = args.file.read_text(encoding="utf-8")
    except OSError as e:
        raise PerplexityError(f"{args.file}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise PerplexityError(f"{args.file}: not UTF-8 text ({e})") from e
    if args.ffn_mode == "all":
        with Model(path, n_ctx=8, n_threads=1) as m:
            has_pred = bool(m.info.get("has_predictor"))
            sparse = m.info.get("ffn_kind") in (1, 2)  # enum ts_ffn_kind: reglu, drelu
            calibrated = bool(m.info.get("has_act_thresholds")) and bool(m.info.get("has_down_t"))
        modes = [m for m in MODES if m == "dense" or (m == "threshold" and calibrated)
                 or (m != "threshold" and sparse and (m != "predicted" or has_pred))]
    else:
        modes = [args.ffn_mode]
    results = [evaluate(path, text, mode, args.ctx_size, args.threads, args.threshold, args.chunks,
                        with_recall=not args.no_recall) for mode in modes]
    print_results(results, args.per_layer)
    if args.json is not None:
        args.json.write_text(json.dumps({"model": path, "file": str(args.file), "ctx_size": args.ctx_size,
                                         "results": [asdict(r) for r in results]}, indent=1))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .errors import TurboSparseError
    from .train.errors import TrainError

    try:
        return run(argv)
    except (PerplexityError, TurboSparseError, TrainError) as e:
        print(f"ts-perplexity: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ts-perplexity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""ts-train-predictor: trains the activation predictors of a dReLU/ReGLU model."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from .errors import TrainError

DESCRIPTION = """\
Train the activation predictors (SPEC §2: logits = W_fc2 relu(W_fc1 u), no biases) of a dReLU or
ReGLU model (per expert for MoE). The model runs densely over the corpus (numpy, one layer at a
time); each layer's predictor input and true active mask are streamed to .npy files; each predictor is trained
(class-weighted cross-entropy, early stopping on held-out rows) and its cut chosen to reach
--recall on the held-out rows. Uses torch for training when installed (--backend)."""

EPILOG = """\
examples:
  ts-train-predictor ./my-bamboo --corpus text/ --outfile my-bamboo-q8_0.gguf --outtype q8_0
  ts-train-predictor model.gguf --corpus wiki.txt --rank 128 --recall 0.97 --outfile model-pred.gguf
  ts-train-predictor ./relu-llama --corpus text/ --out-predictors ./relu-llama-predictors
Output: --outfile writes a new GGUF (from a GGUF input: a copy with new predictors; from a
Hugging Face folder: the converted model, --outtype); --out-predictors writes model_{i}.safetensors
and config.json (sparse_threshold) for `convert-turbosparse --predictors DIR`."""


# the converter's output types (convert.qtypes.OUTTYPES; a test checks they agree), named here
# so that parsing the command line loads no numpy: --threads must be set before numpy starts
OUTTYPE_NAMES = ("f32", "f16", "bf16", "q8_0", "q4_0")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ts-train-predictor", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="turbosparse GGUF file, or Hugging Face checkpoint folder")
    p.add_argument("--corpus", type=Path, action="append", required=True,
                   help="text file, or folder of .txt files (repeatable)")
    p.add_argument("--outfile", type=Path, help="GGUF to write")
    p.add_argument("--out-predictors", type=Path, metavar="DIR", help="Hugging Face predictor folder to write")
    p.add_argument("--outtype", choices=OUTTYPE_NAMES, default="f16",
                   help="Hugging Face input with --outfile: type of the bulk weights (default f16)")
    p.add_argument("--predictor-type", choices=OUTTYPE_NAMES,
                   help="type of the predictor matrices in the GGUF (default: the outtype; f16 for a GGUF input)")
    p.add_argument("--rank", default="64",
                   help="predictor rank: one number, or one per layer separated by commas (default 64)")
    p.add_argument("--recall", type=float, default=0.95, help="recall to reach on held-out rows (default 0.95)")
    p.add_argument("-c", "--ctx-size", type=int, default=256, help="tokens per recorded sequence (default 256)")
    p.add_argument("--max-tokens", type=int, default=200_000, help="tokens of the corpus to record (default 200000)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of recorded rows held out (default 0.1)")
    p.add_argument("--epochs", type=int, default=30, help="most epochs per layer (default 30)")
    p.add_argument("--patience", type=int, default=3, help="epochs without held-out improvement before stopping")
    p.add_argument("--batch", type=int, default=256, help="rows per training step (default 256)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--backend", choices=("auto", "numpy", "torch"), default="auto",
                   help="training backend (default: torch when installed, else numpy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-t", "--threads", type=int,
                   help="threads for numpy's BLAS and torch (default: theirs). Small predictors train faster "
                        "on 1 thread when the machine is busy")
    p.add_argument("--workdir", type=Path, help="folder for the recordings (default: a temporary folder, deleted)")
    p.add_argument("--report", type=Path, help="write the per-layer figures as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--quiet", action="store_true", help="print only the per-layer table")
    p.add_argument("--verbose", action="store_true", help="print the held-out loss of every epoch")
    return p


def _ranks(text: str, n_layer: int) -> list[int]:
    try:
        ranks = [int(v) for v in text.split(",")]
    except ValueError:
        raise TrainError(f"--rank {text!r}: expected a number or comma-separated numbers") from None
    if len(ranks) == 1:
        ranks = ranks * n_layer
    if len(ranks) != n_layer:
        raise TrainError(f"--rank gives {len(ranks)} ranks for a model of {n_layer} layers")
    if min(ranks) < 1:
        raise TrainError("--rank: ranks must be positive")
    return ranks


def run(argv: Optional[Sequence[str]] = None) -> int:
    from .corpus import hold_out_last, token_sequences
    from .fit import FitConfig, evaluate, fit_layer
    from .output import (Predictor, fold_thresholds, stack_experts, write_gguf_from_gguf, write_gguf_from_hf,
                         write_gguf_from_hf_moe, write_predictor_dir)
    from .record import record
    from .weights import GGUFModel, HFModel, open_model

    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise TrainError(f"--threads {args.threads}: at least 1")
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)  # read when numpy/torch load, which is below
    if args.outfile is None and args.out_predictors is None:
        raise TrainError("give --outfile FILE.gguf and/or --out-predictors DIR")
    if args.outfile is not None and args.outfile.exists() and not args.force:
        raise TrainError(f"{args.outfile} exists; pass --force to overwrite it")
    if not 0 < args.recall <= 1:
        raise TrainError(f"--recall must be in (0, 1], got {args.recall}")
    if not 0 < args.val_fraction < 1:
        raise TrainError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    src = open_model(args.model)
    s = src.shape
    ranks = _ranks(args.rank, s.n_layer)
    if s.n_expert and args.out_predictors is not None:
        raise TrainError("--out-predictors: the predictor-folder layout has no experts; MoE predictors go into "
                         "the GGUF (--outfile)")
    start = time.monotonic()
    sequences = hold_out_last(token_sequences(src, args.corpus, args.ctx_size, args.max_tokens), args.val_fraction)
    n_tokens = sum(len(q) for q in sequences)
    moe = f", {s.n_expert} experts (top {s.n_expert_used})" if s.n_expert else ""
    say(f"ts-train-predictor: {s.n_layer} layers, n_embd {s.n_embd}, n_ff {s.n_ff}, {s.ffn_kind}{moe}; "
        f"recording {n_tokens} tokens in {len(sequences)} sequences")

    with tempfile.TemporaryDirectory(prefix="ts-train-") as tmp:
        workdir = args.workdir or Path(tmp)
        rec = record(src, sequences, workdir / "recording")
        say(f"recorded in {time.monotonic() - start:.1f} s")
        keys = [(layer, e) for layer in range(s.n_layer) for e in (range(s.n_expert) if s.n_expert else [-1])]
        fits = []
        for layer, e in keys:
            cfg = FitConfig(rank=ranks[layer], recall=args.recall, epochs=args.epochs, patience=args.patience,
                            batch=args.batch, lr=args.lr, val_fraction=args.val_fraction, backend=args.backend,
                            seed=args.seed, threads=args.threads)
            fits.append(fit_layer(rec, layer, cfg, log=say if args.verbose else None, expert=e))
            f = fits[-1]
            say(f"layer {layer}{f' expert {e}' if e >= 0 else ''}: recall {f.recall:.4f} predicted density "
                f"{f.predicted_density:.4f} true density {f.true_density:.4f} ({f.epochs} epochs, {f.backend})")

        own_cuts = [f.tau for f in fits]
        units, threshold, cuts = fold_thresholds([Predictor(f.fc1, f.fc2) for f in fits], own_cuts)
        for (layer, e), f, cut in zip(keys, fits, cuts):
            if cut != f.tau:  # lowered to share the file's threshold: measure what it gives
                f.recall, f.predicted_density, f.true_density = evaluate(rec, layer, f.fc1, f.fc2, cut, f.val_rows, e)
                f.tau = cut
        if s.n_expert:
            preds = [stack_experts(units[i * s.n_expert:(i + 1) * s.n_expert]) for i in range(s.n_layer)]
        else:
            preds = units
        print_table(fits, keys, ranks, threshold)

        if args.out_predictors is not None:
            write_predictor_dir(args.out_predictors, preds, threshold, args.force)
            say(f"wrote {args.out_predictors}")
        if args.outfile is not None:
            if isinstance(src, GGUFModel):
                write_gguf_from_gguf(src, args.outfile, preds, threshold, args.predictor_type or "f16", args.force)
            elif s.n_expert:
                assert isinstance(src, HFModel)
                write_gguf_from_hf_moe(src, args.outfile, preds, threshold, args.outtype, args.predictor_type,
                                       args.force)
            else:
                assert isinstance(src, HFModel)
                pdir = args.out_predictors
                if pdir is None:
                    pdir = Path(tmp) / "predictors"
                    write_predictor_dir(pdir, preds, threshold, force=True)
                write_gguf_from_hf(src, args.outfile, pdir, threshold, args.outtype, args.predictor_type, args.force)
            say(f"wrote {args.outfile}")
    if args.report is not None:
        args.report.write_text(json.dumps({
            "model": str(args.model), "tokens": n_tokens, "recall_target": args.recall, "threshold": threshold,
            "layers": [{"layer": layer, "expert": e, "rank": ranks[layer], "recall": f.recall,
                        "predicted_density": f.predicted_density, "true_density": f.true_density, "cut": f.tau,
                        "own_cut": own, "epochs": f.epochs} for (layer, e), f, own in zip(keys, fits, own_cuts)],
        }, indent=1))
    say(f"done in {time.monotonic() - start:.1f} s")
    return 0


def print_table(fits, keys: list[tuple[int, int]], ranks: list[int],  # type: ignore[no-untyped-def]
                threshold: float) -> None:
    moe = any(e >= 0 for _, e in keys)
    print("layer " + ("expert " if moe else "") + " rank  recall  pred_density  true_density")
    for (layer, e), f in zip(keys, fits):
        print(f"{layer:5d} " + (f"{e:6d} " if moe else "") +
              f"{ranks[layer]:5d}  {f.recall:6.4f}  {f.predicted_density:12.4f}  {f.true_density:12.4f}")
    print(f"(held-out rows, at each predictor's cut as written; file threshold {threshold:.6g})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return run(argv)
    except TrainError as e:
        print(f"ts-train-predictor: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ts-train-predictor: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

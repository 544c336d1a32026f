"""The bundled model, end to end and reproducible:

  corpus      CPython's pydoc topics + standard-library docstrings (corpus.py), held-out split
  tokenizer   SentencePiece BPE, Llama-style, plus ChatML tokens (tokenizer.py)
  model       Llama architecture, dReLU FFN, trained from scratch with torch (trainer.py)
  checkpoint  Hugging Face "bamboo" layout (config.json, model.safetensors, tokenizer files)
  predictors  ts-train-predictor on the training text
  GGUF        convert-turbosparse --predictors ... --outtype q8_0
  report      ts-perplexity on the held-out text (dense, exact, predicted; per layer),
              decode speed of each mode, a greedy sample

    python -m turbosparse.train.default_model --out python/turbosparse/models/default.gguf

Everything goes under --workdir (default build/default-model); report.json and report.md
there hold the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

MAX_GGUF_BYTES = 25 * 1000 * 1000
SAMPLE_PROMPT = "Return a new"
SAMPLE_QUESTION = "What does json.dumps do?"


@dataclass
class Preset:
    n_pieces: int                 # SentencePiece pieces (vocab = n_pieces + 2 ChatML tokens)
    model: dict[str, Any]         # LlamaConfig fields other than n_vocab
    train: dict[str, Any]         # TrainConfig fields
    predictor_rank: int
    predictor_tokens: int
    predictor_epochs: int
    max_docs: Optional[int] = None  # None: the whole corpus
    eval_chunks: Optional[int] = None
    speed_tokens: int = 128
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # 7.3M parameters (6.3M in the blocks, 1M in the tied embeddings): a q8_0 GGUF of about
    # 9 MB with predictors. 2000 steps of 8 x 256 tokens (4.1M tokens, ~9 passes over the
    # 0.47M-token corpus; the held-out-best checkpoint is kept): measured 1360 tokens/s with one
    # torch thread on the 2-core development machine while other jobs ran (50 min for 2000 steps).
    "full": Preset(n_pieces=4094,
                   model=dict(n_embd=256, n_layer=6, n_head=4, n_head_kv=4, n_ff=1024, n_ctx=256, dropout=0.1),
                   train=dict(steps=2000, batch=8, lr=2e-3, warmup=100, eval_every=200, eval_batches=8),
                   predictor_rank=128, predictor_tokens=100_000, predictor_epochs=12),
    # seconds, for tests of the pipeline itself
    "tiny": Preset(n_pieces=400,
                   model=dict(n_embd=64, n_layer=2, n_head=2, n_head_kv=1, n_ff=128, n_ctx=64, dropout=0.0),
                   train=dict(steps=30, batch=8, lr=3e-3, warmup=5, sparsity_after=5, eval_every=15, eval_batches=2),
                   predictor_rank=16, predictor_tokens=4000, predictor_epochs=3, max_docs=400, eval_chunks=4,
                   speed_tokens=8),
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_corpus(workdir: Path, preset: Preset) -> dict[str, Any]:
    from .corpus import all_documents, chat_examples, digest, split

    docs = all_documents()
    if preset.max_docs is not None:
        docs = docs[:: max(1, len(docs) // preset.max_docs)][: preset.max_docs]
    train_docs, eval_docs = split(docs)
    chats = chat_examples(train_docs)
    folder = workdir / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("\n\n".join([d.text for d in train_docs] + chats) + "\n", encoding="utf-8")
    (folder / "eval.txt").write_text("\n\n".join(d.text for d in eval_docs) + "\n", encoding="utf-8")
    return {"train_docs": train_docs, "eval_docs": eval_docs, "chats": chats,
            "sha256": digest([d.text for d in docs]), "python": sys.version.split()[0]}


def token_streams(encoder: Any, corpus: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training stream: documents and chat examples in a seeded order, each BOS ... EOS (chat
    examples end with <|im_end|> instead of EOS); held-out stream: the held-out documents."""
    from .tokenizer import BOS, EOS

    items = [d.text for d in corpus["train_docs"]] + corpus["chats"]
    order = np.random.default_rng(seed).permutation(len(items))
    n_docs = len(corpus["train_docs"])
    train: list[int] = []
    for i in order:
        train += [BOS] + encoder.encode(items[i]) + ([EOS] if i < n_docs else [])
    held: list[int] = []
    for d in corpus["eval_docs"]:
        held += [BOS] + encoder.encode(d.text) + [EOS]
    return np.asarray(train, dtype=np.int32), np.asarray(held, dtype=np.int32)


def save_hf(folder: Path, model: Any, tokenizer_model: bytes) -> None:
    from safetensors.numpy import save_file

    from .tokenizer import write_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    n_vocab = write_tokenizer(folder, tokenizer_model)
    if n_vocab != model.cfg.n_vocab:
        raise RuntimeError(f"tokenizer has {n_vocab} tokens, model {model.cfg.n_vocab}")
    (folder / "config.json").write_text(json.dumps(model.cfg.hf_config(), indent=1))
    tensors = {k: v.detach().float().cpu().numpy().copy() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def measure(gguf: Path, eval_txt: Path, n_ctx: int, preset: Preset, threads: Optional[int]) -> dict[str, Any]:
    from ...model import Model
    from ...perplexity import evaluate

    out: dict[str, Any] = {"perplexity": {}, "decode_tokens_per_s": {}}
    text = eval_txt.read_text(encoding="utf-8")
    for mode in ("dense", "exact", "predicted"):
        r = evaluate(str(gguf), text, mode, n_ctx, threads, None, preset.eval_chunks)
        out["perplexity"][mode] = asdict(r)
        _log(f"{mode}: ppl {r.perplexity:.3f}, computed {r.computed_share:.4f}, true density {r.true_density:.4f}"
             + (f", recall {r.recall:.4f}" if r.recall is not None else ""))
        with Model(gguf, ffn_mode=mode, n_threads=threads, seed=0) as m:
            m.generate("The", max_tokens=preset.speed_tokens, temperature=0.0)  # warm-up
            m.reset()
            sample = m.generate(SAMPLE_PROMPT, max_tokens=preset.speed_tokens, temperature=0.0)
            out["decode_tokens_per_s"][mode] = m.stats.gen_tokens_per_s
            out.setdefault("samples", {})[mode] = SAMPLE_PROMPT + sample
            if mode == "predicted":
                out["chat_sample"] = {"question": SAMPLE_QUESTION, "answer": m.chat(
                    [{"role": "user", "content": SAMPLE_QUESTION}], max_tokens=64, temperature=0.0)}
    return out


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    p = report["measured"]["perplexity"]
    lines = [f"# {report['name']}", "",
             f"corpus: Python {report['corpus']['python']} pydoc topics + stdlib docstrings, "
             f"sha256 {report['corpus']['sha256'][:16]}…, {report['tokens']['train']} training / "
             f"{report['tokens']['eval']} held-out tokens", "",
             f"model: {report['model']}", f"GGUF: {report['gguf_bytes'] / 1e6:.2f} MB (q8_0)",
             f"training: {report['training']['steps']} steps in {report['training']['seconds'] / 60:.1f} min on "
             f"{report['training']['device']}", "",
             "| mode | perplexity | FFN share computed | true active share | recall | predicted share | decode tok/s |",
             "|---|---|---|---|---|---|---|"]
    for mode in ("dense", "exact", "predicted"):
        r = p[mode]

        def f(v: Optional[float]) -> str:
            return "-" if v is None else f"{v:.4f}"

        lines.append(f"| {mode} | {r['perplexity']:.3f} | {f(r['computed_share'])} | {f(r['true_density'])} | "
                     f"{f(r['recall'])} | {f(r['predicted_density'])} | "
                     f"{report['measured']['decode_tokens_per_s'][mode]:.1f} |")
    lines += ["", "| layer | inactive share (dense) | recall (predicted mode) | predicted share |", "|---|---|---|---|"]
    for i, (d, q) in enumerate(zip(p["dense"]["layers"], p["predicted"]["layers"])):
        lines.append(f"| {i} | {1 - d['true_density']:.4f} | {q['recall']:.4f} | {q['predicted_density']:.4f} |")
    chat = report["measured"].get("chat_sample", {})
    lines += ["", "greedy sample (predicted mode):", "", "```", report["measured"]["samples"]["predicted"], "```",
              "", f"chat (predicted mode): {chat.get('question')}", "", "```", str(chat.get("answer")), "```", ""]
    path.write_text("\n".join(lines))


def run(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m turbosparse.train.default_model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("python/turbosparse/models/default.gguf"),
                    help="the GGUF to write (default: python/turbosparse/models/default.gguf)")
    ap.add_argument("--workdir", type=Path, default=Path("build/default-model"))
    ap.add_argument("--preset", choices=list(PRESETS), default="full")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--threads", type=int, help="CPU threads (default: all)")
    ap.add_argument("--steps", type=int, help="override the preset's training steps")
    ap.add_argument("--predictor-tokens", type=int, help="override the preset's tokens recorded for the predictors")
    ap.add_argument("--recall", type=float, default=0.96,
                    help="recall the predictors aim at on held-out training text (default 0.96: a margin "
                         "so that the held-out documents see at least 0.95)")
    ap.add_argument("--no-measure", action="store_true", help="skip the report's perplexity and speed runs")
    args = ap.parse_args(argv)

    import torch

    from ...convert.cli import main as convert_main
    from ..cli import main as train_predictor_main
    from .llama_torch import LlamaConfig
    from .tokenizer import Encoder, train_sentencepiece
    from .trainer import TrainConfig, train

    preset = PRESETS[args.preset]
    if args.predictor_tokens:
        preset = replace(preset, predictor_tokens=args.predictor_tokens)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    _log("corpus")
    corpus = build_corpus(work, preset)
    _log(f"{len(corpus['train_docs'])} training documents, {len(corpus['chats'])} chat examples, "
         f"{len(corpus['eval_docs'])} held-out documents")

    _log("tokenizer")
    sp_model = train_sentencepiece([d.text for d in corpus["train_docs"]], preset.n_pieces, threads=args.threads or 2)
    encoder = Encoder(sp_model)
    train_stream, eval_stream = token_streams(encoder, corpus, seed=0)
    _log(f"{len(train_stream)} training tokens, {len(eval_stream)} held-out tokens")

    model_cfg = LlamaConfig(n_vocab=encoder.sp.vocab_size() + 2, **preset.model)
    train_cfg = TrainConfig(**preset.train)
    if args.steps:
        train_cfg = replace(train_cfg, steps=args.steps)
    _log(f"model: {model_cfg}; training {train_cfg.steps} steps on {device}")
    model, result = train(model_cfg, train_cfg, train_stream, eval_stream, device, log=_log)
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"trained {n_params / 1e6:.2f}M parameters in {result.seconds / 60:.1f} min")

    hf = work / "hf"
    save_hf(hf, model.cpu(), sp_model)
    _log(f"saved {hf}")

    preds = work / "predictors"
    rc = train_predictor_main([str(hf), "--corpus", str(work / "corpus" / "train.txt"), "--out-predictors", str(preds),
                               "--rank", str(preset.predictor_rank), "--recall", str(args.recall),
                               "--max-tokens", str(preset.predictor_tokens), "-c", str(model_cfg.n_ctx),
                               "--epochs", str(preset.predictor_epochs), "--report", str(work / "predictors.json"),
                               "--force"] + (["--threads", str(args.threads)] if args.threads else []))
    if rc != 0:
        return rc
    args.out.parent.mkdir(parents=True, exist_ok=True)
    name = f"turbosparse-pydoc-{n_params / 1e6:.1f}M"
    rc = convert_main([str(hf), "--predictors", str(preds), "--outtype", "q8_0", "--outfile", str(args.out),
                       "--name", name, "--force", "--quiet"])
    if rc != 0:
        return rc
    size = args.out.stat().st_size
    _log(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    if size > MAX_GGUF_BYTES:
        print(f"error: {args.out} is {size / 1e6:.1f} MB, over the {MAX_GGUF_BYTES / 1e6:.0f} MB limit", file=sys.stderr)
        return 1

    report: dict[str, Any] = {
        "name": name, "preset": args.preset, "n_params": n_params, "model": model_cfg.to_dict(),
        "train_config": asdict(train_cfg), "training": asdict(result), "gguf_bytes": size,
        "corpus": {"python": corpus["python"], "sha256": corpus["sha256"], "train_documents": len(corpus["train_docs"]),
                   "chat_examples": len(corpus["chats"]), "eval_documents": len(corpus["eval_docs"])},
        "tokens": {"train": int(len(train_stream)), "eval": int(len(eval_stream))},
        "predictors": json.loads((work / "predictors.json").read_text()),
        "total_seconds": time.monotonic() - t0,
    }
    if not args.no_measure:
        report["measured"] = measure(args.out, work / "corpus" / "eval.txt", model_cfg.n_ctx, preset, args.threads)
        write_markdown(work / "report.md", report)
    (work / "report.json").write_text(json.dumps(report, indent=1))
    _log(f"done in {(time.monotonic() - t0) / 60:.1f} min; report in {work / 'report.json'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    return run(argv)

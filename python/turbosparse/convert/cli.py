"""convert-turbosparse: the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import ConvertError
from .plan import FFN_KINDS, PREDICTOR_INPUTS, ConvertOptions, ModelPlan
from .kmix import MIXES
from .qtypes import OUTTYPES, nbytes_of

DESCRIPTION = """\
Convert a Hugging Face checkpoint (TurboSparse-Mistral/Bamboo, TurboSparse-Mixtral, ReLU-LLaMA,
ProSparse, or ordinary Llama/Mistral/Mixtral) or a PowerInfer GGUF into a turbosparse GGUF file.
Tensors are streamed one at a time: memory stays near the size of the largest tensor."""

EPILOG = """\
examples:
  convert-turbosparse ./TurboSparse-Mistral-Instruct --outfile tsm-q8_0.gguf --outtype q8_0
  convert-turbosparse ./ReluLLaMA-7B --predictors ./ReluLLaMA-7B-Predictor --outfile relu-llama.gguf
  convert-turbosparse --hf-repo PowerInfer/TurboSparse-Mixtral --no-predictor --outfile tsx.gguf
  convert-turbosparse --from-powerinfer model.powerinfer.gguf --outfile model.gguf
  convert-turbosparse --from-gguf llama-cpp-model.gguf --sparse-ffn --outfile model-sparse.gguf
The format is described in docs/gguf-format.md; the command in docs/convert.md."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert-turbosparse", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", type=Path,
                   help="checkpoint folder (config.json, *.safetensors, tokenizer.model)")
    p.add_argument("--hf-repo", metavar="NAME",
                   help="fetch the checkpoint from the Hugging Face hub (uses its cache; honours HF_HUB_OFFLINE; "
                        "needs huggingface-hub) instead of giving a folder")
    p.add_argument("--from-powerinfer", metavar="FILE", type=Path,
                   help="import a PowerInfer GGUF (magic PWRI) instead of a checkpoint")
    p.add_argument("--from-gguf", metavar="FILE", type=Path,
                   help="with --sparse-ffn: rewrite a SwiGLU GGUF (e.g. a llama.cpp file) with ffn_down_t added "
                        "(ffn_down transposed, in its own type or --outtype); every other tensor and key is copied "
                        "unchanged")
    p.add_argument("--outfile", type=Path,
                   help="output file (default: <model folder>/<name>-<outtype>.gguf, or ./ for --hf-repo)")
    p.add_argument("--outtype", choices=list(OUTTYPES) + list(MIXES),
                   help="type of the bulk 2-D weights (default f16; for --from-powerinfer, keep the file's types). "
                        "Norms stay f32, the MoE router at least f16; rows not a multiple of 32 fall back to f16 "
                        "for q8_0/q4_0; the output head is q8_0 when the outtype is q4_0. q4_k_m, q4_k_s, q5_k_m, "
                        "q6_k: llama.cpp's K-quant mixes (per-tensor types as llama-quantize chooses them, blocks "
                        "by ggml's quantiser; docs/convert.md)")
    p.add_argument("--predictor-type", choices=list(OUTTYPES),
                   help="type of the predictor matrices (default: the outtype)")
    p.add_argument("--predictors", metavar="DIR", type=Path,
                   help="folder of per-layer predictors model_{i}.pt or model_{i}.safetensors (fc1.weight, "
                        "fc2.weight) with an optional config.json holding sparse_threshold: for ReLU "
                        "llama/mistral models (ReLU-LLaMA, ProSparse); overrides predictors inside a checkpoint")
    p.add_argument("--no-predictor", action="store_true",
                   help="write no predictors; the model then runs in the exact or dense mode only")
    p.add_argument("--predictor-input", choices=PREDICTOR_INPUTS,
                   help="what the predictor reads (default: residual for dense-FFN models, ffn_input for MoE)")
    p.add_argument("--threshold", type=float, metavar="TAU",
                   help="default predictor logit cut to record (default: the predictors' sparse_threshold, else 0)")
    p.add_argument("--ffn-kind", choices=FFN_KINDS,
                   help="--from-powerinfer only: the FFN kind, when the architecture does not say it "
                        "(default: drelu for bamboo, reglu for llama)")
    p.add_argument("--sparse-ffn", action="store_true",
                   help="SwiGLU models: also write the neuron-major down projection ffn_down_t beside ffn_down "
                        "(down_layout 'both'), which the threshold FFN mode reads; then calibrate with "
                        "ts-calibrate-sparsity")
    p.add_argument("--name", help="general.name to record (default: the folder or file name)")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    sources = [s for s in (args.model, args.hf_repo, args.from_powerinfer, args.from_gguf) if s is not None]
    if len(sources) != 1:
        p.error("give exactly one source: a model folder, --hf-repo NAME, --from-powerinfer FILE or --from-gguf FILE")
    if args.from_gguf is not None and (not args.sparse_ffn or args.outfile is None):
        p.error("--from-gguf rewrites a GGUF for the threshold mode: give --sparse-ffn and --outfile")
    if args.ffn_kind is not None and args.from_powerinfer is None:
        p.error("--ffn-kind applies to --from-powerinfer only; a checkpoint's config.json says its FFN kind")
    if args.predictors is not None and args.no_predictor:
        p.error("--predictors and --no-predictor contradict each other")
    if args.sparse_ffn and args.from_powerinfer is not None:
        p.error("--sparse-ffn applies to SwiGLU checkpoints, not to --from-powerinfer")
    if args.from_powerinfer is not None and args.predictors is not None:
        p.error("--predictors applies to checkpoints, not to --from-powerinfer")


def _default_outfile(args: argparse.Namespace, plan: ModelPlan) -> Path:
    outtype = args.outtype or ("f16" if args.from_powerinfer is None else "converted")
    folder = args.model if args.model is not None else Path(".")
    return folder / f"{plan.name}-{outtype}.gguf"


def run(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    opts = ConvertOptions(outtype=args.outtype, predictor_type=args.predictor_type, predictors_dir=args.predictors,
                          no_predictor=args.no_predictor, predictor_input=args.predictor_input,
                          threshold=args.threshold, ffn_kind=args.ffn_kind, name=args.name,
                          sparse_ffn=args.sparse_ffn)
    # imported here so that --help works even where a dependency is broken
    from .progress import Progress, summary
    from .writer import tensor_types, write_plan

    if args.outfile is not None and args.outfile.exists() and not args.force:
        raise ConvertError(f"{args.outfile} exists; pass --force to overwrite it")
    if args.from_gguf is not None:
        from .sparse_ffn import rewrite
        if not args.from_gguf.is_file():
            raise ConvertError(f"{args.from_gguf}: no such file")
        rewrite(args.from_gguf, args.outfile, down_type=args.outtype, force=args.force)
        if not args.quiet:
            print(f"wrote {args.outfile}")
        return 0
    if args.from_powerinfer is not None:
        from .powerinfer import build_powerinfer_plan
        plan = build_powerinfer_plan(args.from_powerinfer, opts)
    else:
        from .hf_llama import build_hf_plan
        from .hf_source import fetch_hf_repo, load_config
        folder = args.model if args.model is not None else fetch_hf_repo(args.hf_repo)
        if args.hf_repo is not None and opts.name is None:
            opts.name = args.hf_repo.rstrip("/").split("/")[-1]
        plan = build_hf_plan(folder, load_config(folder), opts)

    outfile = args.outfile if args.outfile is not None else _default_outfile(args, plan)
    types = tensor_types(plan, opts.outtype if args.from_powerinfer is not None else (opts.outtype or "f16"),
                         opts.predictor_type)
    total = sum(nbytes_of(t.shape, q) for t, q in zip(plan.tensors, types))
    progress = Progress(total, enabled=not args.quiet)
    try:
        result = write_plan(plan, outfile, types, force=args.force, progress=progress.callback())
    finally:
        progress.close()
    if not args.quiet:
        print(summary(result))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return run(argv)
    except ConvertError as e:
        print(f"convert-turbosparse: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convert-turbosparse: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

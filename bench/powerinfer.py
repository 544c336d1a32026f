"""PowerInfer as a baseline: its own converter and quantiser make its files from the bench's
synthetic bamboo checkpoint, and `convert-turbosparse --from-powerinfer` imports them, so
turbosparse and PowerInfer read the same weights (SPEC §4: PowerInfer's CPU engine is the
one other engine that runs dReLU models sparse).

PowerInfer's `convert.py` takes an HF folder and a folder of per-layer predictors
(`model_{i}.pt`, torch state dicts with fc1.weight / fc2.weight). The bench's checkpoint keeps
its predictors inside the model (as TurboSparse-Mistral does), so they are written out as
.pt files (torch needed) and the model weights shard is linked into a folder of its own.
PowerInfer's converter also wants the tokenizer to cover every embedding row: the synthetic
vocabulary is padded with added_tokens.json (ChatML tokens, then fillers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

DEFAULT_DIR = Path("/tmp/powerinfer")

HOW_TO_BUILD = """\
PowerInfer (CPU only) is built from its public repository SJTU-IPADS/PowerInfer, in a scratch
folder outside this repository (never commit PowerInfer code):
  git clone https://github.com/SJTU-IPADS/PowerInfer /tmp/powerinfer && cd /tmp/powerinfer
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_NATIVE=ON
  cmake --build build -j2 --target main quantize llama-bench  # -> build/bin/{main,quantize,llama-bench}
Its converter (convert.py, with its own gguf-py) predates numpy 2: give it a venv of its own
  python3 -m venv /tmp/powerinfer/.venv && /tmp/powerinfer/.venv/bin/pip install 'numpy<2' sentencepiece
(the bench runs convert.py with that python, PYTHONPATH=gguf-py). Writing the predictor files
for it needs torch in the bench's own Python (pip install torch)."""


@dataclass(frozen=True)
class PowerInfer:
    root: Path

    @property
    def main(self) -> Path:
        return self.root / "build" / "bin" / "main"

    @property
    def quantize(self) -> Path:
        return self.root / "build" / "bin" / "quantize"

    @property
    def bench(self) -> Path:
        """Its llama-bench, for the API-style column (optional: the process runs need main only)."""
        return self.root / "build" / "bin" / "llama-bench"

    @property
    def convert(self) -> Path:
        return self.root / "convert.py"

    @property
    def python(self) -> str:
        """The venv of the recipe when there is one (convert.py needs numpy < 2)."""
        venv = self.root / ".venv" / "bin" / "python"
        return str(venv) if venv.is_file() else sys.executable


def find_powerinfer(given: Optional[Path]) -> Optional[PowerInfer]:
    pi = PowerInfer(given or DEFAULT_DIR)
    ok = pi.main.is_file() and pi.quantize.is_file() and pi.convert.is_file()
    return pi if ok else None


def _write_predictors(drelu_hf: Path, out: Path, n_layer: int) -> None:
    """model_{i}.pt with fc1.weight / fc2.weight from the checkpoint's predictor shard, as f16
    (PowerInfer converts them to f16 anyway; bf16 -> f16 is exact but for subnormals)."""
    import torch
    from safetensors import safe_open

    index = json.loads((drelu_hf / "model.safetensors.index.json").read_text())["weight_map"]
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n_layer):
        dst = out / f"model_{i}.pt"
        if dst.is_file():
            continue
        state = {}
        for k in ("fc1", "fc2"):
            name = f"model.layers.{i}.mlp.predictor.{k}.weight"
            with safe_open(drelu_hf / index[name], framework="pt") as f:
                state[f"{k}.weight"] = f.get_tensor(name).to(torch.float16).contiguous()
        torch.save(state, dst.with_suffix(".part"))
        dst.with_suffix(".part").rename(dst)


def _write_model_folder(drelu_hf: Path, out: Path, weights_shard: str) -> None:
    """The weights without the predictors: config, tokenizer, the weights shard linked in."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((drelu_hf / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    link = out / "model.safetensors"
    if not link.exists():
        os.symlink(os.path.relpath(drelu_hf / weights_shard, out), link)
    (out / "tokenizer.model").write_bytes((drelu_hf / "tokenizer.model").read_bytes())
    from sentencepiece import SentencePieceProcessor

    n_sp = SentencePieceProcessor(model_file=str(drelu_hf / "tokenizer.model")).get_piece_size()
    names = ["<|im_end|>", "<|im_start|>"] + [f"<|filler_{i}|>" for i in range(cfg["vocab_size"] - n_sp - 2)]
    (out / "added_tokens.json").write_text(json.dumps({n: n_sp + i for i, n in enumerate(names)}))


def make_files(pi: PowerInfer, root: Path, drelu_hf: Path, weights_shard: str, n_layer: int,
               types: list[str], log: Callable[[str], None]) -> dict[str, Path]:
    """PowerInfer's F16 file from its converter and the other types from its quantize, once."""
    files = {"f16": root / "powerinfer-f16.gguf"}
    if not files["f16"].is_file():
        hf, preds = root / "hf-powerinfer", root / "powerinfer-predictors"
        _write_model_folder(drelu_hf, hf, weights_shard)
        _write_predictors(drelu_hf, preds, n_layer)
        log(f"PowerInfer convert.py -> {files['f16'].name}")
        tmp = files["f16"].with_suffix(".part")
        env = dict(os.environ, PYTHONPATH=str(pi.root / "gguf-py"))
        _run([pi.python, str(pi.convert), str(hf), str(preds), "--outtype", "f16", "--outfile", str(tmp)], env)
        tmp.rename(files["f16"])
    for q in types:
        if q == "f16":
            continue
        files[q] = root / f"powerinfer-{q}.gguf"
        if not files[q].is_file():
            log(f"PowerInfer quantize -> {files[q].name}")
            tmp = files[q].with_suffix(".part")
            _run([str(pi.quantize), str(files["f16"]), str(tmp), q.upper()], None)
            tmp.rename(files[q])
    return files


def _run(cmd: list[str], env: Optional[dict]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-2500:]}")


def import_file(repo: Path, pi_file: Path, out: Path, log: Callable[[str], None]) -> Path:
    """turbosparse's file from PowerInfer's, as a user makes it: every tensor kept as it is."""
    if out.is_file():
        return out
    log(f"convert-turbosparse --from-powerinfer {pi_file.name} -> {out.name}")
    tmp = out.with_suffix(".part")
    _run([sys.executable, str(repo / "convert" / "convert-turbosparse.py"), "--from-powerinfer", str(pi_file),
          "--outfile", str(tmp), "--quiet", "--force"], None)
    tmp.rename(out)
    return out


def sparse_env(threshold: float) -> dict:
    """PowerInfer reads its predictor threshold from the environment (a process-wide global);
    it compares the same predictor logits with it as turbosparse does (neuron on iff logit >= t)."""
    return dict(os.environ, LLAMA_SPARSE_PRED_THRESHOLD=repr(float(threshold)))


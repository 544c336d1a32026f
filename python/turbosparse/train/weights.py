"""A dReLU/ReGLU model's shape and weights, from a Hugging Face folder or a turbosparse GGUF.

Weights are handed out one layer at a time, float32, in the Hugging Face convention
([out, in] matrices, un-permuted Q/K for rotate_half RoPE, down_proj [n_embd, n_ff]), so one
forward pass serves both sources and only one layer is ever held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..convert.errors import ConvertError
from .errors import TrainError

FFN_KINDS = ("reglu", "drelu")


@dataclass(frozen=True)
class ModelShape:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    rope_linear_factor: float  # positions are divided by it (linear RoPE scaling), 1 = none
    sliding_window: int        # 0 = none
    ffn_kind: str              # reglu | drelu
    predictor_input: str       # residual | ffn_input
    n_expert: int = 0          # 0: dense FFN
    n_expert_used: int = 0


@dataclass
class LayerWeights:
    """MoE layers (router set) stack the experts on a new first axis: gate [E, n_ff, n_embd],
    down [E, n_embd, n_ff], fc1 [E, r, n_embd], fc2 [E, n_ff, r]."""
    attn_norm: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    gate: np.ndarray           # [n_ff, n_embd]
    up: np.ndarray             # [n_ff, n_embd]
    down: np.ndarray           # [n_embd, n_ff]
    fc1: Optional[np.ndarray]  # [r, n_embd], None without a predictor
    fc2: Optional[np.ndarray]  # [n_ff, r]
    router: Optional[np.ndarray] = None  # [E, n_embd], MoE only


class ModelSource:
    """What the forward pass and the tools read; subclasses know one file format."""

    shape: ModelShape
    path: Path
    has_predictor: bool
    threshold: float

    def embeddings(self) -> np.ndarray:
        raise NotImplementedError

    def layer(self, i: int) -> LayerWeights:
        raise NotImplementedError

    def output(self) -> tuple[np.ndarray, np.ndarray]:
        """(final norm weight, lm head [n_vocab, n_embd])."""
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` without BOS; control/user-defined token texts become their ids."""
        raise NotImplementedError

    @property
    def bos_id(self) -> int:
        raise NotImplementedError


def open_model(path: Path) -> ModelSource:
    path = Path(path)
    if path.is_dir():
        return HFModel(path)
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return GGUFModel(path)
        raise TrainError(f"{path}: not a GGUF file (magic {magic!r}) and not a Hugging Face folder")
    raise TrainError(f"{path}: no such file or folder")


def _split_specials(text: str, specials: list[tuple[str, int]], encode) -> list[int]:  # type: ignore[no-untyped-def]
    """Each special token's text becomes its id; the fragments between are encoded on their
    own (each with its own dummy prefix), as turbosparse.Model.tokenize does with special=True."""
    if not specials:
        return list(encode(text))
    import re

    pattern = re.compile("|".join(re.escape(t) for t, _ in specials))
    ids_of = dict(specials)
    out: list[int] = []
    start = 0
    for m in pattern.finditer(text):
        if m.start() > start:
            out += encode(text[start:m.start()])
        out.append(ids_of[m.group()])
        start = m.end()
    if start < len(text):
        out += encode(text[start:])
    return out


# ---------------------------------------------------------------------------------------
# Hugging Face folder

class HFModel(ModelSource):
    def __init__(self, folder: Path):
        from ..convert.hf_llama import ARCHS, read_hparams
        from ..convert.hf_source import load_config
        from ..convert.safetensors_lazy import Checkpoint

        self.path = Path(folder)
        try:
            config = load_config(self.path)
            model_type = str(config.get("model_type"))
            arch = ARCHS.get(model_type)
            if arch is None:
                raise TrainError(f"{self.path / 'config.json'}: unknown model_type {model_type!r}")
            kind = arch.ffn_kind_by_act.get(str(config.get("hidden_act", "silu")))
            if kind not in FFN_KINDS:
                raise TrainError(f"{self.path}: FFN is {kind or config.get('hidden_act')!r}; predictors are for "
                                 "ReGLU/dReLU models (hidden_act relu)")
            hp = read_hparams(config, moe=arch.moe)
            self._ckpt = Checkpoint(self.path)
        except ConvertError as e:
            raise TrainError(str(e)) from e
        self.config = config
        self.model_type = model_type
        self.shape = ModelShape(
            n_vocab=hp.n_vocab, n_embd=hp.n_embd, n_layer=hp.n_layer, n_ff=hp.n_ff, n_head=hp.n_head,
            n_head_kv=hp.n_head_kv, head_dim=hp.head_dim, rms_eps=hp.norm_eps, rope_theta=hp.rope_theta,
            rope_linear_factor=hp.rope_scaling[1] if hp.rope_scaling else 1.0,
            sliding_window=hp.sliding_window or 0, ffn_kind=kind, predictor_input=arch.predictor_input,
            n_expert=hp.n_expert, n_expert_used=hp.n_expert_used)
        self.tied = "lm_head.weight" not in self._ckpt
        self.has_predictor = ("model.layers.0.block_sparse_moe.experts.0.predictor.fc1.weight" if hp.n_expert
                              else "model.layers.0.mlp.predictor.fc1.weight") in self._ckpt
        self.threshold = float(config.get("sparse_threshold", 0.0) or 0.0)
        self._sp = None
        self._specials: list[tuple[str, int]] = []
        self._bos = int(config.get("bos_token_id") if config.get("bos_token_id") is not None else 1)

    def _get(self, name: str) -> np.ndarray:
        try:
            return self._ckpt.load_f32(name)
        except ConvertError as e:
            raise TrainError(str(e)) from e

    def embeddings(self) -> np.ndarray:
        return self._get("model.embed_tokens.weight")

    def layer(self, i: int) -> LayerWeights:
        p = f"model.layers.{i}"
        pred = self.has_predictor
        common = dict(
            attn_norm=self._get(f"{p}.input_layernorm.weight"),
            wq=self._get(f"{p}.self_attn.q_proj.weight"), wk=self._get(f"{p}.self_attn.k_proj.weight"),
            wv=self._get(f"{p}.self_attn.v_proj.weight"), wo=self._get(f"{p}.self_attn.o_proj.weight"),
            ffn_norm=self._get(f"{p}.post_attention_layernorm.weight"))
        if self.shape.n_expert:
            m = f"{p}.block_sparse_moe"

            def stack(name: str) -> np.ndarray:
                return np.stack([self._get(f"{m}.experts.{e}.{name}") for e in range(self.shape.n_expert)])

            return LayerWeights(**common, gate=stack("w1.weight"), up=stack("w3.weight"), down=stack("w2.weight"),
                                fc1=stack("predictor.fc1.weight") if pred else None,
                                fc2=stack("predictor.fc2.weight") if pred else None,
                                router=self._get(f"{m}.gate.weight"))
        return LayerWeights(
            **common,
            gate=self._get(f"{p}.mlp.gate_proj.weight"), up=self._get(f"{p}.mlp.up_proj.weight"),
            down=self._get(f"{p}.mlp.down_proj.weight"),
            fc1=self._get(f"{p}.mlp.predictor.fc1.weight") if pred else None,
            fc2=self._get(f"{p}.mlp.predictor.fc2.weight") if pred else None)

    def output(self) -> tuple[np.ndarray, np.ndarray]:
        head = self._get("model.embed_tokens.weight" if self.tied else "lm_head.weight")
        return self._get("model.norm.weight"), head

    def _load_tokenizer(self) -> None:
        from ..convert.tokenizer import read_vocab

        import sentencepiece as spm

        try:
            vocab = read_vocab(self.path, self.config)
        except ConvertError as e:
            raise TrainError(str(e)) from e
        self._sp = spm.SentencePieceProcessor(model_file=str(self.path / "tokenizer.model"))
        specials = [(t.decode("utf-8"), i) for i, (t, kind) in enumerate(zip(vocab.tokens, vocab.types))
                    if kind in (3, 4) and t]
        self._specials = sorted(specials, key=lambda s: -len(s[0]))
        if vocab.bos is not None:
            self._bos = vocab.bos

    def tokenize(self, text: str) -> list[int]:
        if self._sp is None:
            self._load_tokenizer()
        assert self._sp is not None
        sp = self._sp
        return _split_specials(text, self._specials, lambda s: sp.encode(s))

    @property
    def bos_id(self) -> int:
        if self._sp is None:
            self._load_tokenizer()
        return self._bos


# ---------------------------------------------------------------------------------------
# turbosparse GGUF

def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert.transforms.permute_qk: ggml's interleaved rows back to HF's halves."""
    rows = w.shape[0]
    return np.ascontiguousarray(
        w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


class GGUFModel(ModelSource):
    def __init__(self, path: Path):
        from gguf import GGUFReader

        self.path = Path(path)
        try:
            self.reader = GGUFReader(self.path)
        except (ValueError, IndexError, KeyError) as e:
            raise TrainError(f"{self.path}: cannot parse the GGUF ({e})") from e
        self.tensors = {t.name: t for t in self.reader.tensors}
        kind = self._str("turbosparse.ffn_kind", "swiglu")
        if kind not in FFN_KINDS:
            raise TrainError(f"{self.path}: turbosparse.ffn_kind is {kind!r}; predictors are for reglu/drelu models")
        n_expert = int(self._opt("llama.expert_count") or 0)
        n_embd = int(self._need("llama.embedding_length"))
        n_head = int(self._need("llama.attention.head_count"))
        scale_type = self._opt("llama.rope.scaling.type")
        self.shape = ModelShape(
            n_vocab=len(self.reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in
            self.reader.fields else int(self._need("llama.vocab_size")),
            n_embd=n_embd, n_layer=int(self._need("llama.block_count")),
            n_ff=int(self._need("llama.feed_forward_length")), n_head=n_head,
            n_head_kv=int(self._opt("llama.attention.head_count_kv") or n_head),
            head_dim=int(self._opt("llama.attention.key_length") or n_embd // n_head),
            rms_eps=float(self._need("llama.attention.layer_norm_rms_epsilon")),
            rope_theta=float(self._opt("llama.rope.freq_base") or 10000.0),
            rope_linear_factor=float(self._need("llama.rope.scaling.factor")) if scale_type == "linear" else 1.0,
            sliding_window=int(self._opt("llama.attention.sliding_window") or 0),
            ffn_kind=kind, predictor_input=self._str("turbosparse.predictor.input", "residual"),
            n_expert=n_expert, n_expert_used=int(self._opt("llama.expert_used_count") or 0) if n_expert else 0)
        self._x = "_exps" if n_expert else ""
        self.has_predictor = bool(self._opt("turbosparse.predictor.present")) and \
            f"blk.0.ffn_pred_fc1{self._x}.weight" in self.tensors
        self.threshold = float(self._opt("turbosparse.predictor.threshold") or 0.0)
        self._tok = None

    def _opt(self, key: str):  # type: ignore[no-untyped-def]
        field = self.reader.get_field(key)
        if field is None:
            return None
        from ..convert.powerinfer import _field_value

        value = _field_value(field)
        return value.decode("utf-8") if isinstance(value, bytes) else value

    def _need(self, key: str):  # type: ignore[no-untyped-def]
        value = self._opt(key)
        if value is None:
            raise TrainError(f"{self.path}: metadata key {key!r} missing")
        return value

    def _str(self, key: str, default: str) -> str:
        value = self._opt(key)
        return default if value is None else str(value)

    def _get(self, name: str) -> np.ndarray:
        from gguf import GGMLQuantizationType

        from ..convert.qtypes import decode

        t = self.tensors.get(name)
        if t is None:
            raise TrainError(f"{self.path}: tensor {name!r} missing")
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        try:
            return decode(t.data, GGMLQuantizationType(int(t.tensor_type)), shape)
        except ConvertError as e:
            raise TrainError(f"{self.path}: tensor {name!r}: {e}") from e

    def embeddings(self) -> np.ndarray:
        return self._get("token_embd.weight")

    def layer(self, i: int) -> LayerWeights:
        b, s, x = f"blk.{i}", self.shape, self._x
        if f"{b}.ffn_down_t{x}.weight" in self.tensors:  # neuron-major: swap the last two axes back
            down = np.swapaxes(self._get(f"{b}.ffn_down_t{x}.weight"), -1, -2)
        else:
            down = self._get(f"{b}.ffn_down{x}.weight")
        pred = self.has_predictor
        return LayerWeights(
            attn_norm=self._get(f"{b}.attn_norm.weight"),
            wq=unpermute_qk(self._get(f"{b}.attn_q.weight"), s.n_head),
            wk=unpermute_qk(self._get(f"{b}.attn_k.weight"), s.n_head_kv),
            wv=self._get(f"{b}.attn_v.weight"), wo=self._get(f"{b}.attn_output.weight"),
            ffn_norm=self._get(f"{b}.ffn_norm.weight"),
            gate=self._get(f"{b}.ffn_gate{x}.weight"), up=self._get(f"{b}.ffn_up{x}.weight"),
            down=np.ascontiguousarray(down),
            fc1=self._get(f"{b}.ffn_pred_fc1{x}.weight") if pred else None,
            fc2=self._get(f"{b}.ffn_pred_fc2{x}.weight") if pred else None,
            router=self._get(f"{b}.ffn_gate_inp.weight") if s.n_expert else None)

    def output(self) -> tuple[np.ndarray, np.ndarray]:
        name = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"
        return self._get("output_norm.weight"), self._get(name)

    def _tokenizer(self):  # type: ignore[no-untyped-def]
        # the runtime's own tokenizer (through the Python API), so the ids are the ones the
        # runtime will see; the model is memory-mapped and gets a tiny context
        if self._tok is None:
            from ..model import Model

            self._tok = Model(self.path, n_ctx=8, n_threads=1)
        return self._tok

    def tokenize(self, text: str) -> list[int]:
        return list(self._tokenizer().tokenize(text, add_bos=False, special=True))

    @property
    def bos_id(self) -> int:
        return int(self._tokenizer().token_bos())

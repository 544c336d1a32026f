"""Hugging Face Llama-family checkpoints -> a ModelPlan.

One backbone (Llama/Mistral attention, RMSNorm, gated FFN) with five flavours:

| model_type          | hidden_act | FFN kind | MoE | predictors              | predictor input |
|---------------------|-----------|----------|-----|-------------------------|-----------------|
| bamboo              | relu      | drelu    | no  | in the checkpoint       | residual        |
| turbosparsemixtral  | relu      | drelu    | yes | in the checkpoint       | ffn_input       |
| llama, mistral      | relu      | reglu    | no  | --predictors DIR        | residual        |
| llama, mistral      | silu      | swiglu   | no  | none                    | -               |
| mixtral             | silu      | swiglu   | yes | none                    | -               |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .errors import ConvertError
from .plan import (FORMAT_VERSION, KEY_DOWN_LAYOUT, KEY_FFN_KIND, KEY_FORMAT_VERSION, KEY_PREDICTOR_INPUT,
                   KEY_PREDICTOR_PRESENT, KEY_PREDICTOR_THRESHOLD, KEY_SOURCE_MODEL_TYPE, ConvertOptions,
                   ModelPlan, OutTensor, SourceTensor)
from .predictors import load_predictor_dir
from .qtypes import FILE_TYPES, Role
from .safetensors_lazy import Checkpoint, check_dtype, load_entry_f32
from .tokenizer import add_vocab, read_vocab
from .transforms import neuron_major, permute_qk


@dataclass(frozen=True)
class ArchInfo:
    ffn_kind_by_act: dict[str, str]
    moe: bool
    predictors_inside: bool
    predictor_input: str


ARCHS: dict[str, ArchInfo] = {
    "bamboo": ArchInfo({"relu": "drelu"}, moe=False, predictors_inside=True, predictor_input="residual"),
    "turbosparsemixtral": ArchInfo({"relu": "drelu"}, moe=True, predictors_inside=True, predictor_input="ffn_input"),
    "llama": ArchInfo({"silu": "swiglu", "relu": "reglu"}, moe=False, predictors_inside=False,
                      predictor_input="residual"),
    "mistral": ArchInfo({"silu": "swiglu", "relu": "reglu"}, moe=False, predictors_inside=False,
                        predictor_input="residual"),
    "mixtral": ArchInfo({"silu": "swiglu"}, moe=True, predictors_inside=False, predictor_input="ffn_input"),
}

# checkpoint tensors that carry nothing a ggml graph needs
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class HParams:
    n_vocab: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    norm_eps: float
    rope_theta: float
    sliding_window: Optional[int]
    n_expert: int
    n_expert_used: int
    tied_embeddings: bool
    rope_scaling: Optional[tuple[str, float]]


def _need(config: dict[str, Any], key: str) -> Any:
    if config.get(key) is None:
        raise ConvertError(f"config.json has no {key!r}")
    return config[key]


def read_hparams(config: dict[str, Any], moe: bool) -> HParams:
    n_embd = int(_need(config, "hidden_size"))
    n_head = int(_need(config, "num_attention_heads"))
    head_dim = int(config.get("head_dim") or n_embd // n_head)
    scaling = config.get("rope_scaling")
    rope_scaling: Optional[tuple[str, float]] = None
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind != "linear":
            raise ConvertError(f"config.json rope_scaling type {kind!r} is not supported (only 'linear')")
        rope_scaling = ("linear", float(scaling["factor"]))
    hp = HParams(
        n_vocab=int(_need(config, "vocab_size")),
        n_embd=n_embd,
        n_ff=int(_need(config, "intermediate_size")),
        n_layer=int(_need(config, "num_hidden_layers")),
        n_head=n_head,
        n_head_kv=int(config.get("num_key_value_heads") or n_head),
        head_dim=head_dim,
        n_ctx=int(_need(config, "max_position_embeddings")),
        norm_eps=float(_need(config, "rms_norm_eps")),
        rope_theta=float(config.get("rope_theta") or 10000.0),
        sliding_window=int(config["sliding_window"]) if config.get("sliding_window") else None,
        n_expert=int(_need(config, "num_local_experts")) if moe else 0,
        n_expert_used=int(_need(config, "num_experts_per_tok")) if moe else 0,
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope_scaling=rope_scaling,
    )
    if hp.n_head % hp.n_head_kv != 0:
        raise ConvertError(f"config.json: {hp.n_head} attention heads are not a multiple of {hp.n_head_kv} KV heads")
    if hp.head_dim % 2 != 0:
        raise ConvertError(f"config.json: head dimension {hp.head_dim} is odd; RoPE needs pairs")
    return hp


class _Source:
    """Tensors of the checkpoint, shape-checked, with a record of which ones were used."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.ckpt

    def get(self, name: str, shape: tuple[int, ...]) -> SourceTensor:
        entry = self.ckpt.entry(name)
        check_dtype(entry)
        if entry.shape != shape:
            raise ConvertError(f"{entry.where} has shape {list(entry.shape)}, expected {list(shape)}")
        self.used.add(name)
        return SourceTensor(name, entry.shape, entry.where, lambda: load_entry_f32(entry))


def _checked(src: SourceTensor, shape: tuple[int, ...]) -> SourceTensor:
    if src.shape != shape:
        raise ConvertError(f"{src.where} has shape {list(src.shape)}, expected {list(shape)}")
    return src


def _stack(sources: list[SourceTensor], transform: Callable[[np.ndarray], np.ndarray],
           out_shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
    """Experts stacked on a new first axis (ggml's last), one expert in memory at a time."""
    def load() -> np.ndarray:
        out = np.empty(out_shape, dtype=np.float32)
        for e, src in enumerate(sources):
            out[e] = transform(src.load())
        return out
    return load


def _mapped(src: SourceTensor, transform: Callable[[np.ndarray], np.ndarray]) -> Callable[[], np.ndarray]:
    return lambda: transform(src.load())


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def build_hf_plan(folder: Path, config: dict[str, Any], opts: ConvertOptions) -> ModelPlan:
    model_type = config.get("model_type")
    arch = ARCHS.get(str(model_type))
    if arch is None:
        raise ConvertError(f"{folder / 'config.json'}: unknown model_type {model_type!r} "
                           f"(supported: {', '.join(ARCHS)})")
    act = str(config.get("hidden_act", "silu"))
    kind = arch.ffn_kind_by_act.get(act)
    if kind is None:
        raise ConvertError(f"{folder / 'config.json'}: model_type {model_type!r} with hidden_act {act!r} is not "
                           f"supported (supported: {', '.join(arch.ffn_kind_by_act)})")
    hp = read_hparams(config, arch.moe)
    sparse = kind != "swiglu"
    if opts.sparse_ffn and (kind != "swiglu" or arch.moe):
        raise ConvertError("--sparse-ffn is for dense SwiGLU models (the threshold FFN mode); this checkpoint is "
                           f"{'a mixture of experts' if arch.moe else kind}, which needs no such option")
    both = opts.sparse_ffn  # SwiGLU: ffn_down for dense mode / llama.cpp, ffn_down_t for the threshold mode
    src = _Source(Checkpoint(folder))
    vocab = read_vocab(folder, config)

    outtype = opts.outtype or "f16"
    plan = ModelPlan(name=opts.name or folder.name, source_model_type=str(model_type), ffn_kind=kind)
    plan.string("general.name", plan.name)
    plan.u32("general.file_type", FILE_TYPES[outtype])
    plan.u32("general.quantization_version", 2)
    plan.u32("llama.context_length", hp.n_ctx)
    plan.u32("llama.embedding_length", hp.n_embd)
    plan.u32("llama.block_count", hp.n_layer)
    plan.u32("llama.feed_forward_length", hp.n_ff)
    plan.u32("llama.attention.head_count", hp.n_head)
    plan.u32("llama.attention.head_count_kv", hp.n_head_kv)
    plan.f32("llama.attention.layer_norm_rms_epsilon", hp.norm_eps)
    plan.f32("llama.rope.freq_base", hp.rope_theta)
    plan.u32("llama.rope.dimension_count", hp.head_dim)
    if hp.head_dim * hp.n_head != hp.n_embd:
        plan.u32("llama.attention.key_length", hp.head_dim)
        plan.u32("llama.attention.value_length", hp.head_dim)
    if hp.rope_scaling is not None:
        plan.string("llama.rope.scaling.type", hp.rope_scaling[0])
        plan.f32("llama.rope.scaling.factor", hp.rope_scaling[1])
    if hp.sliding_window is not None:
        plan.u32("llama.attention.sliding_window", hp.sliding_window)
    plan.u32("llama.vocab_size", hp.n_vocab)
    if arch.moe:
        plan.u32("llama.expert_count", hp.n_expert)
        plan.u32("llama.expert_used_count", hp.n_expert_used)
    add_vocab(plan, vocab)

    predictors, threshold = _find_predictors(src, folder, arch, hp, sparse, opts)
    plan.u32(KEY_FORMAT_VERSION, FORMAT_VERSION)
    plan.string(KEY_SOURCE_MODEL_TYPE, str(model_type))
    plan.string(KEY_FFN_KIND, kind)
    plan.string(KEY_DOWN_LAYOUT, "neuron_major" if sparse else "both" if both else "standard")
    plan.boolean(KEY_PREDICTOR_PRESENT, predictors is not None)
    if sparse:
        plan.string(KEY_PREDICTOR_INPUT, opts.predictor_input or arch.predictor_input)
        plan.f32(KEY_PREDICTOR_THRESHOLD, opts.threshold if opts.threshold is not None else (threshold or 0.0))

    _add_tensors(plan, src, hp, arch, sparse, predictors, both)

    leftover = [n for n in src.ckpt.names() if n not in src.used and not n.endswith(_IGNORED_SUFFIXES)
                and not (".predictor." in n and (opts.no_predictor or opts.predictors_dir is not None))]
    if leftover:
        entry = src.ckpt.entry(leftover[0])
        raise ConvertError(f"{entry.where} is not part of a {model_type} model "
                           f"({len(leftover)} unexpected tensor(s))")
    return plan


# per layer: {"fc1", "fc2"} -> source tensors; for MoE a list over experts of such dicts
Predictors = list[Any]


def _find_predictors(src: _Source, folder: Path, arch: ArchInfo, hp: HParams, sparse: bool,
                     opts: ConvertOptions) -> tuple[Optional[Predictors], Optional[float]]:
    if not sparse:
        if opts.predictors_dir is not None:
            raise ConvertError("--predictors given, but this model has a SwiGLU FFN, which predictors do not apply to")
        return None, None
    if opts.no_predictor:
        return None, None
    if opts.predictors_dir is not None:
        if arch.moe:
            raise ConvertError("--predictors is for dense-FFN models; MoE predictors must be in the checkpoint")
        layers, threshold = load_predictor_dir(Path(opts.predictors_dir), hp.n_layer)
        return [{"fc1": layer["fc1.weight"], "fc2": layer["fc2.weight"]} for layer in layers], threshold
    if not arch.predictors_inside:
        raise ConvertError(f"a ReLU {'/'.join(k for k in ARCHS if not ARCHS[k].predictors_inside)} model needs its "
                           "predictors: pass --predictors DIR (model_{i}.pt or .safetensors), or --no-predictor "
                           "to convert it for the exact and dense modes only")
    first = ("model.layers.0.block_sparse_moe.experts.0.predictor.fc1.weight" if arch.moe
             else "model.layers.0.mlp.predictor.fc1.weight")
    if not src.has(first):
        raise ConvertError(f"the checkpoint in {folder} has no predictors ({first} missing); pass --no-predictor to "
                           "convert it for the exact and dense modes only")
    out: Predictors = []
    for i in range(hp.n_layer):
        if arch.moe:
            out.append([_inside_predictor(src, f"model.layers.{i}.block_sparse_moe.experts.{e}.predictor")
                        for e in range(hp.n_expert)])
        else:
            out.append(_inside_predictor(src, f"model.layers.{i}.mlp.predictor"))
    return out, None


def _inside_predictor(src: _Source, prefix: str) -> dict[str, SourceTensor]:
    fc1, fc2 = f"{prefix}.fc1.weight", f"{prefix}.fc2.weight"
    e1, e2 = src.ckpt.entry(fc1), src.ckpt.entry(fc2)
    return {"fc1": src.get(fc1, e1.shape), "fc2": src.get(fc2, e2.shape)}


def _predictor_rank(p: dict[str, SourceTensor], hp: HParams) -> int:
    fc1, fc2 = p["fc1"], p["fc2"]
    if len(fc1.shape) != 2 or fc1.shape[1] != hp.n_embd:
        raise ConvertError(f"{fc1.where} has shape {list(fc1.shape)}, expected [rank, {hp.n_embd}]")
    rank = fc1.shape[0]
    _checked(fc2, (hp.n_ff, rank))
    return rank


def _add_tensors(plan: ModelPlan, src: _Source, hp: HParams, arch: ArchInfo, sparse: bool,
                 predictors: Optional[Predictors], both: bool = False) -> None:
    """both: a SwiGLU model's down projection twice, ffn_down and ffn_down_t (--sparse-ffn)."""
    W, N = Role.WEIGHT, Role.NORM
    q_rows, kv_rows = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim

    def plain(name: str, hf: str, shape: tuple[int, ...], role: Role,
              transform: Callable[[np.ndarray], np.ndarray] = _identity, out_shape: Optional[tuple[int, ...]] = None,
              is_predictor: bool = False) -> None:
        s = src.get(hf, shape)
        plan.tensor(OutTensor(name, out_shape or shape, role, _mapped(s, transform), is_predictor=is_predictor))

    plain("token_embd.weight", "model.embed_tokens.weight", (hp.n_vocab, hp.n_embd), W)
    plain("output_norm.weight", "model.norm.weight", (hp.n_embd,), N)
    if src.has("lm_head.weight") or not hp.tied_embeddings:
        plain("output.weight", "lm_head.weight", (hp.n_vocab, hp.n_embd), Role.OUTPUT)

    for i in range(hp.n_layer):
        hf, blk = f"model.layers.{i}", f"blk.{i}"
        plain(f"{blk}.attn_norm.weight", f"{hf}.input_layernorm.weight", (hp.n_embd,), N)
        plain(f"{blk}.attn_q.weight", f"{hf}.self_attn.q_proj.weight", (q_rows, hp.n_embd), W,
              lambda a: permute_qk(a, hp.n_head))
        plain(f"{blk}.attn_k.weight", f"{hf}.self_attn.k_proj.weight", (kv_rows, hp.n_embd), W,
              lambda a: permute_qk(a, hp.n_head_kv))
        plain(f"{blk}.attn_v.weight", f"{hf}.self_attn.v_proj.weight", (kv_rows, hp.n_embd), W)
        plain(f"{blk}.attn_output.weight", f"{hf}.self_attn.o_proj.weight", (hp.n_embd, q_rows), W)
        plain(f"{blk}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight", (hp.n_embd,), N)
        pred = predictors[i] if predictors is not None else None
        if arch.moe:
            _add_moe_ffn(plan, src, hp, i, sparse, pred)
        else:
            plain(f"{blk}.ffn_gate.weight", f"{hf}.mlp.gate_proj.weight", (hp.n_ff, hp.n_embd), W)
            plain(f"{blk}.ffn_up.weight", f"{hf}.mlp.up_proj.weight", (hp.n_ff, hp.n_embd), W)
            if sparse:
                plain(f"{blk}.ffn_down_t.weight", f"{hf}.mlp.down_proj.weight", (hp.n_embd, hp.n_ff), W,
                      neuron_major, (hp.n_ff, hp.n_embd))
            else:
                plain(f"{blk}.ffn_down.weight", f"{hf}.mlp.down_proj.weight", (hp.n_embd, hp.n_ff), W)
                if both:
                    plain(f"{blk}.ffn_down_t.weight", f"{hf}.mlp.down_proj.weight", (hp.n_embd, hp.n_ff), W,
                          neuron_major, (hp.n_ff, hp.n_embd))
            if pred is not None:
                rank = _predictor_rank(pred, hp)
                for key, shape in (("fc1", (rank, hp.n_embd)), ("fc2", (hp.n_ff, rank))):
                    plan.tensor(OutTensor(f"{blk}.ffn_pred_{key}.weight", shape, Role.PREDICTOR,
                                          pred[key].load, is_predictor=True))


def _add_moe_ffn(plan: ModelPlan, src: _Source, hp: HParams, i: int, sparse: bool,
                 pred: Optional[list[dict[str, SourceTensor]]]) -> None:
    hf, blk, E = f"model.layers.{i}.block_sparse_moe", f"blk.{i}", hp.n_expert
    router = src.get(f"{hf}.gate.weight", (E, hp.n_embd))
    plan.tensor(OutTensor(f"{blk}.ffn_gate_inp.weight", router.shape, Role.ROUTER, router.load))

    def experts(w: str, shape: tuple[int, ...]) -> list[SourceTensor]:
        return [src.get(f"{hf}.experts.{e}.{w}.weight", shape) for e in range(E)]

    ff_shape = (hp.n_ff, hp.n_embd)
    for name, w in (("ffn_gate_exps", "w1"), ("ffn_up_exps", "w3")):
        plan.tensor(OutTensor(f"{blk}.{name}.weight", (E, *ff_shape), Role.WEIGHT,
                              _stack(experts(w, ff_shape), _identity, (E, *ff_shape))))
    down = experts("w2", (hp.n_embd, hp.n_ff))
    if sparse:
        plan.tensor(OutTensor(f"{blk}.ffn_down_t_exps.weight", (E, hp.n_ff, hp.n_embd), Role.WEIGHT,
                              _stack(down, neuron_major, (E, hp.n_ff, hp.n_embd))))
    else:
        plan.tensor(OutTensor(f"{blk}.ffn_down_exps.weight", (E, hp.n_embd, hp.n_ff), Role.WEIGHT,
                              _stack(down, _identity, (E, hp.n_embd, hp.n_ff))))
    if pred is None:
        return
    ranks = [_predictor_rank(p, hp) for p in pred]
    if len(set(ranks)) != 1:
        raise ConvertError(f"layer {i}: expert predictors have different ranks {ranks}; "
                           "the stacked layout needs one rank per layer")
    rank = ranks[0]
    for key, shape in (("fc1", (rank, hp.n_embd)), ("fc2", (hp.n_ff, rank))):
        plan.tensor(OutTensor(f"{blk}.ffn_pred_{key}_exps.weight", (E, *shape), Role.PREDICTOR,
                              _stack([p[key] for p in pred], _identity, (E, *shape)), is_predictor=True))

"""Tiny random models for the runtime tests: HF-named weights for numpy_reference, and a GGUF
writer that lays them out as docs/gguf-format.md says (Q/K permuted as llama.cpp's converter
does, neuron-major down projection for sparse kinds, stacked experts), with the `gguf` package.

The weights handed back are the values the file holds (after f16 rounding or quantisation),
so the reference and the runtime compute on identical numbers.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import quants

from numpy_reference import RefConfig

FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}
QTYPES = {"f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0}


def tiny_config(kind: str, moe: bool = False, **over) -> RefConfig:
    cfg = RefConfig(n_vocab=320, n_embd=64, n_layer=2, n_ff=128, n_head=4, n_head_kv=2,
                    rms_eps=1e-5, rope_theta=10000.0, ffn_kind=kind)
    if moe:
        cfg.n_expert, cfg.n_expert_used, cfg.rope_theta = 4, 2, 1e6
        cfg.predictor_input = "ffn_input"
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def random_weights(cfg: RefConfig, seed: int, predictor_rank: int = 0, tied: bool = False) -> dict:
    """HF-named float32 weights, scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    E, F, hd = cfg.n_embd, cfg.n_ff, cfg.head_dim

    def lin(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((cfg.n_vocab, E)).astype(np.float32),
         "model.norm.weight": norm()}
    if not tied:
        w["lm_head.weight"] = lin(cfg.n_vocab, E)
    for il in range(cfg.n_layer):
        p = f"model.layers.{il}"
        w[f"{p}.input_layernorm.weight"] = norm()
        w[f"{p}.post_attention_layernorm.weight"] = norm()
        w[f"{p}.self_attn.q_proj.weight"] = lin(cfg.n_head * hd, E)
        w[f"{p}.self_attn.k_proj.weight"] = lin(cfg.n_head_kv * hd, E)
        w[f"{p}.self_attn.v_proj.weight"] = lin(cfg.n_head_kv * hd, E)
        w[f"{p}.self_attn.o_proj.weight"] = lin(E, cfg.n_head * hd)
        ffns = [f"{p}.mlp"] if not cfg.n_expert else [f"{p}.block_sparse_moe.experts.{e}" for e in range(cfg.n_expert)]
        names = ("gate_proj", "up_proj", "down_proj") if not cfg.n_expert else ("w1", "w3", "w2")
        if cfg.n_expert:
            w[f"{p}.block_sparse_moe.gate.weight"] = lin(cfg.n_expert, E) * 4.0
        for f in ffns:
            w[f"{f}.{names[0]}.weight"] = lin(F, E)
            w[f"{f}.{names[1]}.weight"] = lin(F, E)
            w[f"{f}.{names[2]}.weight"] = lin(E, F)
            if predictor_rank:
                w[f"{f}.predictor.fc1.weight"] = lin(predictor_rank, E)
                w[f"{f}.predictor.fc2.weight"] = lin(F, predictor_rank)
    return w


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation: HF rotate_half pairs -> adjacent pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def store(arr: np.ndarray, outtype: str) -> tuple[np.ndarray, np.ndarray, QT | None]:
    """(bytes or array to write, the float32 values the file then holds, raw dtype)."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if outtype == "f32":
        return arr, arr, None
    if outtype == "f16" or arr.shape[-1] % 32 != 0:
        h = arr.astype(np.float16)
        return h, h.astype(np.float32), None
    q = quants.quantize(arr, QTYPES[outtype])
    return q, quants.dequantize(q, QTYPES[outtype]).astype(np.float32).reshape(arr.shape), QTYPES[outtype]


def vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-like vocabulary: <unk> <s> </s>, 256 byte tokens, then word pieces."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(tokens) < n_vocab:
        piece = ("\u2581" + letters[i % 26]) if i < 26 else letters[i % 26] * (1 + i // 26)
        tokens.append(piece)
        types.append(1)
        i += 1
    scores = [0.0] * 259 + [-float(j) for j in range(n_vocab - 259)]
    return tokens[:n_vocab], scores[:n_vocab], types[:n_vocab]


def write_gguf(path: Path, cfg: RefConfig, w: dict, outtype: str = "f32", plain_llamacpp: bool = False,
               threshold: float = 0.0, neuron_major: bool | None = None, arch: str = "llama",
               skip: tuple[str, ...] = (), replace: dict | None = None) -> dict:
    """Writes `w` as a GGUF; returns the weights as stored (HF names, float32) for the reference.
    plain_llamacpp: no turbosparse.* keys (a dense SwiGLU file as llama.cpp writes it).
    arch, skip (GGUF tensor names left out) and replace (GGUF name -> array written instead)
    make broken files for the error tests."""
    replace = replace or {}
    stored = dict(w)
    has_pred = any(".predictor." in k for k in w)
    if neuron_major is None:
        neuron_major = cfg.ffn_kind != "swiglu"
    wr = gguf.GGUFWriter(str(path), arch)
    wr.add_name("tiny-test")
    wr.add_file_type(FILE_TYPES[outtype])
    wr.add_context_length(256)
    wr.add_embedding_length(cfg.n_embd)
    wr.add_block_count(cfg.n_layer)
    wr.add_feed_forward_length(cfg.n_ff)
    wr.add_head_count(cfg.n_head)
    wr.add_head_count_kv(cfg.n_head_kv)
    wr.add_layer_norm_rms_eps(cfg.rms_eps)
    wr.add_rope_freq_base(cfg.rope_theta)
    wr.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim_override:
        wr.add_key_length(cfg.head_dim)
        wr.add_value_length(cfg.head_dim)
    if cfg.rope_linear_factor != 1.0:
        wr.add_string("llama.rope.scaling.type", "linear")
        wr.add_float32("llama.rope.scaling.factor", cfg.rope_linear_factor)
    wr.add_vocab_size(cfg.n_vocab)
    if cfg.sliding_window:
        wr.add_sliding_window(cfg.sliding_window)
    if cfg.n_expert:
        wr.add_expert_count(cfg.n_expert)
        wr.add_expert_used_count(cfg.n_expert_used)
    tokens, scores, types = vocab(cfg.n_vocab)
    wr.add_tokenizer_model("llama")
    wr.add_token_list(tokens)
    wr.add_token_scores(scores)
    wr.add_token_types(types)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_unk_token_id(0)
    if not plain_llamacpp:
        wr.add_uint32("turbosparse.format_version", 1)
        wr.add_string("turbosparse.source_model_type", "turbosparsemixtral" if cfg.n_expert else "bamboo")
        wr.add_string("turbosparse.ffn_kind", cfg.ffn_kind)
        wr.add_string("turbosparse.down_layout", "neuron_major" if neuron_major else "standard")
        wr.add_bool("turbosparse.predictor.present", has_pred)
        wr.add_string("turbosparse.predictor.input", cfg.predictor_input)
        wr.add_float32("turbosparse.predictor.threshold", threshold)

    def put(name: str, arr: np.ndarray, kind: str = "bulk", hf: str | None = None,
            transform=None, untransform=None) -> None:
        if name in skip:
            return
        if name in replace:  # written as given, type and all
            wr.add_tensor(name, replace[name])
            return
        t = outtype if kind == "bulk" else ("f32" if kind == "norm" or outtype == "f32" else "f16")
        data, held, raw = store(arr, t)
        if raw is None:
            wr.add_tensor(name, data)
        else:
            wr.add_tensor(name, data, raw_dtype=raw)
        if hf is not None:
            stored[hf] = untransform(held) if untransform else held

    E = cfg.n_embd
    put("token_embd.weight", w["model.embed_tokens.weight"], hf="model.embed_tokens.weight")
    put("output_norm.weight", w["model.norm.weight"], "norm", hf="model.norm.weight")
    if "lm_head.weight" in w:
        put("output.weight", w["lm_head.weight"], hf="lm_head.weight")
    for il in range(cfg.n_layer):
        p, b = f"model.layers.{il}", f"blk.{il}"
        put(f"{b}.attn_norm.weight", w[f"{p}.input_layernorm.weight"], "norm", hf=f"{p}.input_layernorm.weight")
        put(f"{b}.ffn_norm.weight", w[f"{p}.post_attention_layernorm.weight"], "norm",
            hf=f"{p}.post_attention_layernorm.weight")
        for src, dst, nh in (("q_proj", "attn_q", cfg.n_head), ("k_proj", "attn_k", cfg.n_head_kv)):
            hfname = f"{p}.self_attn.{src}.weight"
            # the held permuted values are un-permuted for the reference (the permutation is a
            # reordering of rows, so un-permuting is its inverse)
            inv = np.argsort(permute_qk(np.arange(w[hfname].shape[0]), nh))
            put(f"{b}.{dst}.weight", permute_qk(w[hfname], nh), hf=hfname, untransform=lambda h, inv=inv: h[inv])
        put(f"{b}.attn_v.weight", w[f"{p}.self_attn.v_proj.weight"], hf=f"{p}.self_attn.v_proj.weight")
        put(f"{b}.attn_output.weight", w[f"{p}.self_attn.o_proj.weight"], hf=f"{p}.self_attn.o_proj.weight")
        if not cfg.n_expert:
            m = f"{p}.mlp"
            put(f"{b}.ffn_gate.weight", w[f"{m}.gate_proj.weight"], hf=f"{m}.gate_proj.weight")
            put(f"{b}.ffn_up.weight", w[f"{m}.up_proj.weight"], hf=f"{m}.up_proj.weight")
            if neuron_major:
                put(f"{b}.ffn_down_t.weight", w[f"{m}.down_proj.weight"].T, hf=f"{m}.down_proj.weight",
                    untransform=lambda h: h.T)
            else:
                put(f"{b}.ffn_down.weight", w[f"{m}.down_proj.weight"], hf=f"{m}.down_proj.weight")
            if has_pred:
                put(f"{b}.ffn_pred_fc1.weight", w[f"{m}.predictor.fc1.weight"], hf=f"{m}.predictor.fc1.weight")
                put(f"{b}.ffn_pred_fc2.weight", w[f"{m}.predictor.fc2.weight"], hf=f"{m}.predictor.fc2.weight")
        else:
            m, X = f"{p}.block_sparse_moe", cfg.n_expert
            put(f"{b}.ffn_gate_inp.weight", w[f"{m}.gate.weight"], "router", hf=f"{m}.gate.weight")

            def stack(name: str, t=lambda a: a) -> np.ndarray:
                return np.stack([t(w[f"{m}.experts.{e}.{name}.weight"]) for e in range(X)])

            def unstack(name: str, held: np.ndarray, t=lambda a: a) -> np.ndarray:
                for e in range(X):
                    stored[f"{m}.experts.{e}.{name}.weight"] = t(held[e])
                return held

            for src, dst in (("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps")):
                put(f"{b}.{dst}.weight", stack(src), hf=f"_{dst}", untransform=lambda h, s=src: unstack(s, h))
            if neuron_major:
                put(f"{b}.ffn_down_t_exps.weight", stack("w2", lambda a: a.T), hf="_down",
                    untransform=lambda h: unstack("w2", h, lambda a: a.T))
            else:
                put(f"{b}.ffn_down_exps.weight", stack("w2"), hf="_down", untransform=lambda h: unstack("w2", h))
            if has_pred:
                put(f"{b}.ffn_pred_fc1_exps.weight", stack("predictor.fc1"), hf="_fc1",
                    untransform=lambda h: unstack("predictor.fc1", h))
                put(f"{b}.ffn_pred_fc2_exps.weight", stack("predictor.fc2"), hf="_fc2",
                    untransform=lambda h: unstack("predictor.fc2", h))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return {k: v for k, v in stored.items() if not k.startswith("_")}

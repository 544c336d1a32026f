"""Tiny Hugging Face checkpoints (and a PowerInfer GGUF) for tests, written without torch.

    from hf_fixtures import write_tiny_checkpoint, read_tiny_tensors
    config = write_tiny_checkpoint(tmp_path, arch="bamboo", n_layer=2, dtype="bf16")
    tensors = read_tiny_tensors(tmp_path)          # name -> float32, exactly the stored values

Architectures (`arch`):
  bamboo               TurboSparse-Mistral layout: dReLU, predictors inside the checkpoint
  turbosparsemixtral   TurboSparse-Mixtral: router, experts w1/w2/w3, per-expert predictors
  relu-llama           ReLU-LLaMA/ProSparse: model_type llama, hidden_act relu; predictors in
                       predictor_dir(folder) as model_{i}.safetensors or .pt, with config.json
  llama, mistral       dense SwiGLU
  mixtral              dense SwiGLU MoE

Every checkpoint gets a SentencePiece tokenizer.model trained on a small text, and a
tokenizer_config.json with ChatML added tokens <|im_end|>, <|im_start|> (right after the
SentencePiece pieces, as in TurboSparse) and a ChatML chat template; vocab_size is padded
to a multiple of 8 past them, so the converter's [PAD{i}] path is exercised too.
"""

from __future__ import annotations

import functools
import io
import json
import struct
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ARCHS = ("bamboo", "turbosparsemixtral", "relu-llama", "llama", "mistral", "mixtral")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Sparse models compute only the neurons that fire.",
    "A small predictor guesses which neurons are active before the layer runs.",
    "Hello world, this is a tiny tokenizer trained for tests.",
    "Numbers 0123456789 and punctuation !?;:'\" appear here too.",
    "User: what is the capital of France? Assistant: Paris.",
]


@functools.lru_cache(maxsize=None)
def tiny_sentencepiece_model() -> bytes:
    """A Llama-style SentencePiece model (BPE, byte fallback, unk=0 bos=1 eos=2), serialised."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TEXT * 20), model_writer=buf, vocab_size=320, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1)
    return buf.getvalue()


def tiny_sentencepiece_size() -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=tiny_sentencepiece_model()).vocab_size()


# ---------------------------------------------------------------------------------------
# safetensors, written by hand so that bf16 needs no torch and big files stream

_ST_DTYPES = {"f32": ("F32", np.dtype("<f4")), "f16": ("F16", np.dtype("<f2")), "bf16": ("BF16", np.dtype("<u2"))}


def round_to_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values that `dtype` stores exactly (round to nearest even), still as float32."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "f32":
        return a.copy()
    if dtype == "f16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        return _from_bf16_bits(_to_bf16_bits(a))
    raise ValueError(dtype)


def _to_bf16_bits(a: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def _from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def _encode(a: np.ndarray, dtype: str) -> bytes:
    if dtype == "bf16":
        return _to_bf16_bits(a).tobytes()
    return np.ascontiguousarray(a, dtype=_ST_DTYPES[dtype][1]).tobytes()


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "f32") -> None:
    """Write float tensors as safetensors of `dtype` ("f32", "f16" or "bf16")."""
    st_name, np_dtype = _ST_DTYPES[dtype]
    header: dict[str, Any] = {}
    offset = 0
    for name, a in tensors.items():
        n = int(np.prod(a.shape)) * np_dtype.itemsize
        header[name] = {"dtype": st_name, "shape": list(a.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in tensors.values():
            f.write(_encode(a, dtype))


def write_safetensors_lazy(path: Path, shapes: dict[str, tuple[int, ...]],
                           make: Callable[[str, tuple[int, ...]], np.ndarray], dtype: str = "f32") -> int:
    """Like write_safetensors, but each tensor is made by make(name, shape) just before it is
    written, so files far larger than memory can be written. Returns the file size."""
    st_name, np_dtype = _ST_DTYPES[dtype]
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * np_dtype.itemsize
        header[name] = {"dtype": st_name, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in shapes.items():
            f.write(_encode(make(name, shape), dtype))
    return 8 + len(raw) + offset


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """float32 copies of every tensor of a safetensors file (independent of the converter's reader)."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = data[8 + n + b:8 + n + e]
        if info["dtype"] == "BF16":
            a = _from_bf16_bits(np.frombuffer(raw, dtype="<u2"))
        else:
            a = np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2"}[info["dtype"]]).astype(np.float32)
        out[name] = a.reshape(info["shape"])
    return out


# ---------------------------------------------------------------------------------------
# checkpoints

def predictor_dir(folder: Path) -> Path:
    """Where write_tiny_checkpoint puts the separate predictors of a relu-llama checkpoint."""
    return Path(folder) / "predictors"


def _model_type(arch: str) -> str:
    return "llama" if arch == "relu-llama" else arch


def tiny_config(arch: str = "bamboo", n_layer: int = 2, n_embd: int = 64, n_ff: int = 96, n_head: int = 4,
                n_head_kv: int = 2, n_expert: int = 4, n_expert_used: int = 2, tied: bool = False) -> dict[str, Any]:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}")
    n_sp = tiny_sentencepiece_size()
    relu = arch in ("bamboo", "turbosparsemixtral", "relu-llama")
    config: dict[str, Any] = {
        "architectures": [{"bamboo": "BambooForCausalLM", "turbosparsemixtral": "TurboSparseMixtralForCausalLM",
                           "mixtral": "MixtralForCausalLM", "mistral": "MistralForCausalLM"}.get(
                               arch, "LlamaForCausalLM")],
        "model_type": _model_type(arch),
        "hidden_act": "relu" if relu else "silu",
        "hidden_size": n_embd,
        "intermediate_size": n_ff,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e6 if arch in ("turbosparsemixtral", "mixtral") else 10000.0,
        "sliding_window": 256 if arch in ("bamboo", "mistral") else None,
        "vocab_size": (n_sp + 2 + 7) // 8 * 8 + 8,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
    }
    if arch in ("turbosparsemixtral", "mixtral"):
        config["num_local_experts"] = n_expert
        config["num_experts_per_tok"] = n_expert_used
    return config


def predictor_ranks(n_layer: int) -> list[int]:
    """Predictor rank per layer: they differ, and 48 is not a multiple of 32 (f16 fallback)."""
    return [32 if i % 2 == 0 else 48 for i in range(n_layer)]


def _tensors(config: dict[str, Any], arch: str, with_predictor: bool, rng: np.random.Generator,
             dtype: str) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
    n_embd, n_ff, n_layer = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    hd = n_embd // config["num_attention_heads"]
    q_rows, kv_rows = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    n_vocab = config["vocab_size"]
    ranks = predictor_ranks(n_layer)

    def w(*shape: int, scale: float = 0.05) -> np.ndarray:
        return round_to_dtype(rng.standard_normal(shape, dtype=np.float32) * scale, dtype)

    def norm(n: int) -> np.ndarray:
        return round_to_dtype(1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32), dtype)

    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": w(n_vocab, n_embd)}
    external: dict[int, dict[str, np.ndarray]] = {}
    for i in range(n_layer):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = norm(n_embd)
        t[f"{p}.self_attn.q_proj.weight"] = w(q_rows, n_embd)
        t[f"{p}.self_attn.k_proj.weight"] = w(kv_rows, n_embd)
        t[f"{p}.self_attn.v_proj.weight"] = w(kv_rows, n_embd)
        t[f"{p}.self_attn.o_proj.weight"] = w(n_embd, q_rows)
        t[f"{p}.post_attention_layernorm.weight"] = norm(n_embd)
        if arch in ("turbosparsemixtral", "mixtral"):
            m = f"{p}.block_sparse_moe"
            t[f"{m}.gate.weight"] = w(config["num_local_experts"], n_embd)
            for e in range(config["num_local_experts"]):
                t[f"{m}.experts.{e}.w1.weight"] = w(n_ff, n_embd)
                t[f"{m}.experts.{e}.w2.weight"] = w(n_embd, n_ff)
                t[f"{m}.experts.{e}.w3.weight"] = w(n_ff, n_embd)
                if arch == "turbosparsemixtral" and with_predictor:
                    t[f"{m}.experts.{e}.predictor.fc1.weight"] = w(ranks[i], n_embd)
                    t[f"{m}.experts.{e}.predictor.fc2.weight"] = w(n_ff, ranks[i])
        else:
            t[f"{p}.mlp.gate_proj.weight"] = w(n_ff, n_embd)
            t[f"{p}.mlp.up_proj.weight"] = w(n_ff, n_embd)
            t[f"{p}.mlp.down_proj.weight"] = w(n_embd, n_ff)
            if with_predictor and arch == "bamboo":
                t[f"{p}.mlp.predictor.fc1.weight"] = w(ranks[i], n_embd)
                t[f"{p}.mlp.predictor.fc2.weight"] = w(n_ff, ranks[i])
            if with_predictor and arch == "relu-llama":
                external[i] = {"fc1.weight": w(ranks[i], n_embd), "fc2.weight": w(n_ff, ranks[i])}
    t["model.norm.weight"] = norm(n_embd)
    if not config["tie_word_embeddings"]:
        t["lm_head.weight"] = w(n_vocab, n_embd)
    return t, external


def write_tokenizer(folder: Path, config: dict[str, Any]) -> None:
    """tokenizer.model, tokenizer_config.json (ChatML) for a config from tiny_config."""
    folder = Path(folder)
    (folder / "tokenizer.model").write_bytes(tiny_sentencepiece_model())
    n_sp = tiny_sentencepiece_size()
    tok_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "pad_token": None,
        "chat_template": CHATML_TEMPLATE,
        "added_tokens_decoder": {
            "0": {"content": "<unk>", "special": True},
            "1": {"content": "<s>", "special": True},
            "2": {"content": "</s>", "special": True},
            str(n_sp): {"content": "<|im_end|>", "special": True},
            str(n_sp + 1): {"content": "<|im_start|>", "special": True},
            str(n_sp + 2): {"content": "\u2581tiny", "special": False},
        },
        "tokenizer_class": "LlamaTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))


def write_tiny_checkpoint(folder: Path, arch: str = "bamboo", n_layer: int = 2, dtype: str = "bf16",
                          sharded: bool = False, with_predictor: bool = True, predictor_format: str = "safetensors",
                          seed: int = 0, sparse_threshold: Optional[float] = 0.25, **dims: Any) -> dict[str, Any]:
    """Write a tiny checkpoint of `arch` into `folder`; returns its config.json as a dict.

    dtype: "bf16", "f16" or "f32" for every tensor. sharded: split over three files with a
    model.safetensors.index.json. with_predictor: predictors inside (bamboo,
    turbosparsemixtral) or in predictor_dir(folder) (relu-llama, as model_{i}.<predictor_format>,
    "safetensors" or "pt" (needs torch), with config.json holding sparse_threshold unless None).
    dims: tiny_config's n_embd, n_ff, n_head, n_head_kv, n_expert, n_expert_used, tied.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(arch, n_layer=n_layer, **dims)
    rng = np.random.default_rng(seed)
    tensors, external = _tensors(config, arch, with_predictor, rng, dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    write_tokenizer(folder, config)
    if sharded:
        names = list(tensors)
        n_shards = 3
        parts = [names[i::n_shards] for i in range(n_shards)]
        weight_map = {}
        for k, part in enumerate(parts):
            shard = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
            write_safetensors(folder / shard, {n: tensors[n] for n in part}, dtype)
            weight_map.update({n: shard for n in part})
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=1))
    else:
        write_safetensors(folder / "model.safetensors", tensors, dtype)
    if external:
        pdir = predictor_dir(folder)
        pdir.mkdir(exist_ok=True)
        for i, layer in external.items():
            if predictor_format == "pt":
                import torch

                dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
                torch.save({k: torch.from_numpy(v.copy()).to(dt) for k, v in layer.items()}, pdir / f"model_{i}.pt")
            else:
                write_safetensors(pdir / f"model_{i}.safetensors", layer, dtype)
        if sparse_threshold is not None:
            (pdir / "config.json").write_text(json.dumps({"sparse_threshold": sparse_threshold}))
    return config


def read_tiny_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint folder (all shards) as float32, plus the separate predictors
    of relu-llama as "predictor.{i}.fc1.weight" / "predictor.{i}.fc2.weight"."""
    folder = Path(folder)
    out: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(read_safetensors(path))
    pdir = predictor_dir(folder)
    if pdir.is_dir():
        for path in sorted(pdir.glob("model_*.safetensors")):
            i = int(path.stem.split("_")[1])
            out.update({f"predictor.{i}.{k}": v for k, v in read_safetensors(path).items()})
        for path in sorted(pdir.glob("model_*.pt")):
            import torch

            i = int(path.stem.split("_")[1])
            state = torch.load(path, map_location="cpu", weights_only=True)
            out.update({f"predictor.{i}.{k}": v.float().numpy() for k, v in state.items()})
    return out


# ---------------------------------------------------------------------------------------
# PowerInfer GGUF (SPEC §4): GGUF with its magic overwritten by PWRI

def write_powerinfer_gguf(path: Path, n_layer: int = 2, n_embd: int = 64, n_ff: int = 96, n_head: int = 4,
                          n_head_kv: int = 2, rank: int = 32, weight_type: str = "f16", seed: int = 0,
                          sparse_threshold: Optional[float] = 0.5, fc_suffix: bool = True,
                          head_type: Optional[str] = None) -> dict[str, Any]:
    """A PowerInfer "bamboo" GGUF as PowerInfer's converter writes it (ffn_down_t, blk.N.fc1/fc2,
    powerinfer.sparse_threshold, magic PWRI). weight_type: "f16", "f32" or "q4_0" for the 2-D
    weights; head_type "q6_k" gives output.weight the type PowerInfer's quantize gives it
    (encoded by ggml's own quantiser; n_embd a multiple of 256). Returns {"tensors": name -> (float32 values in numpy order, ggml type name),
    "vocab_size", "im_end"}."""
    import gguf

    rng = np.random.default_rng(seed)
    n_sp = tiny_sentencepiece_size()
    n_vocab = n_sp + 2
    hd = n_embd // n_head
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "f32": gguf.GGMLQuantizationType.F32,
             "q4_0": gguf.GGMLQuantizationType.Q4_0}[weight_type]
    writer = gguf.GGUFWriter(path, "bamboo")
    writer.add_name("tiny-powerinfer")
    writer.add_context_length(512)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_rope_dimension_count(hd)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(1)
    if sparse_threshold is not None:
        writer.add_float32("powerinfer.sparse_threshold", sparse_threshold)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=tiny_sentencepiece_model())
    tokens = [sp.IdToPiece(i).encode() for i in range(n_sp)] + [b"<|im_end|>", b"<|im_start|>"]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([sp.GetScore(i) for i in range(n_sp)] + [-1000.0, -1000.0])
    writer.add_token_types([1] * n_sp + [3, 3])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    written: dict[str, tuple[np.ndarray, str]] = {}

    def add(name: str, a: np.ndarray, kind: str) -> None:
        a = np.asarray(a, dtype=np.float32)
        if name == "output.weight" and head_type == "q6_k":
            from ggml_quant import ggml_encode

            q6 = gguf.GGMLQuantizationType.Q6_K
            raw = ggml_encode(a, q6).reshape(a.shape[0], -1)
            writer.add_tensor(name, raw, raw_dtype=q6)
            written[name] = (gguf.quants.dequantize(raw, q6), q6.name)
        elif kind == "norm":
            writer.add_tensor(name, a)
            written[name] = (a, "F32")
        elif qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, a)
            written[name] = (a, "F32")
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, a.astype(np.float16))
            written[name] = (a.astype(np.float16).astype(np.float32), "F16")
        else:
            q = gguf.quants.quantize(a, qtype)
            writer.add_tensor(name, q, raw_dtype=qtype)
            written[name] = (gguf.quants.dequantize(q, qtype), qtype.name)

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * 0.05

    suffix = ".weight" if fc_suffix else ""
    add("token_embd.weight", w(n_vocab, n_embd), "w")
    add("output_norm.weight", 1 + 0.1 * w(n_embd), "norm")
    add("output.weight", w(n_vocab, n_embd), "w")
    for i in range(n_layer):
        b = f"blk.{i}"
        add(f"{b}.attn_norm.weight", 1 + 0.1 * w(n_embd), "norm")
        add(f"{b}.attn_q.weight", w(n_embd, n_embd), "w")
        add(f"{b}.attn_k.weight", w(n_head_kv * hd, n_embd), "w")
        add(f"{b}.attn_v.weight", w(n_head_kv * hd, n_embd), "w")
        add(f"{b}.attn_output.weight", w(n_embd, n_embd), "w")
        add(f"{b}.ffn_norm.weight", 1 + 0.1 * w(n_embd), "norm")
        add(f"{b}.ffn_gate.weight", w(n_ff, n_embd), "w")
        add(f"{b}.ffn_up.weight", w(n_ff, n_embd), "w")
        add(f"{b}.ffn_down_t.weight", w(n_ff, n_embd), "w")
        add(f"{b}.fc1{suffix}", w(rank, n_embd), "w")
        add(f"{b}.fc2{suffix}", w(n_ff, rank), "w")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(path, "r+b") as f:
        f.write(b"PWRI")
    return {"tensors": written, "vocab_size": n_vocab, "im_end": n_sp}

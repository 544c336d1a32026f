"""The SentencePiece vocabulary, special tokens and chat template, as llama.cpp writes them.

Pieces, scores and token types follow llama.cpp's convert_hf_to_gguf.py
(_create_vocab_sentencepiece): ids past the SentencePiece model up to `vocab_size` are
"[PAD{i}]" (type unused) unless tokenizer_config.json / added_tokens.json name them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from gguf import GGUFValueType, TokenType

from .errors import ConvertError
from .plan import ModelPlan

# end-of-turn pieces of the chat formats we know, best first
_EOT_PIECES = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


@dataclass
class Vocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    bos: Optional[int]
    eos: Optional[int]
    unk: Optional[int]
    pad: Optional[int]
    eot: Optional[int]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    chat_template: Optional[str]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _proto_fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message, without descending."""
    out = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((field, wire, value))
    return out


def sentencepiece_add_dummy_prefix(model_bytes: bytes) -> bool:
    """NormalizerSpec.add_dummy_prefix (ModelProto field 3, its field 3; default true).

    Read from the wire format directly so that the protobuf package is not needed.
    """
    for field, wire, value in _proto_fields(model_bytes):
        if field == 3 and wire == 2:
            for sub_field, sub_wire, sub_value in _proto_fields(value):
                if sub_field == 3 and sub_wire == 0:
                    return bool(sub_value)
    return True


def _token_content(value: Any) -> Optional[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return data


def _chat_template(tok_config: dict[str, Any], path: Path) -> Optional[str]:
    template = tok_config.get("chat_template")
    if template is None or isinstance(template, str):
        return template or None
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        for entry in template:
            if isinstance(entry, dict) and entry.get("name") == "default":
                return str(entry["template"])
    raise ConvertError(f"{path}: chat_template has no usable default template")


def read_vocab(folder: Path, config: dict[str, Any]) -> Vocab:
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise ConvertError("reading tokenizer.model needs the sentencepiece package: pip install sentencepiece") from None

    model_path = folder / "tokenizer.model"
    if not model_path.is_file():
        raise ConvertError(f"tokenizer missing: {model_path} not found (a SentencePiece tokenizer.model is required)")
    model_bytes = model_path.read_bytes()
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model_bytes)
    except RuntimeError as e:
        raise ConvertError(f"{model_path}: not a SentencePiece model ({e})") from e

    n_sp = sp.vocab_size()
    vocab_size = int(config.get("vocab_size") or n_sp)
    if n_sp > vocab_size:
        raise ConvertError(f"{model_path} has {n_sp} pieces but config.json vocab_size is {vocab_size}")

    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i in range(n_sp):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = float(sp.GetScore(i))
        if sp.IsUnknown(i):
            types[i] = int(TokenType.UNKNOWN)
        elif sp.IsControl(i):
            types[i] = int(TokenType.CONTROL)
        elif sp.IsUnused(i):
            types[i] = int(TokenType.UNUSED)
        elif sp.IsByte(i):
            types[i] = int(TokenType.BYTE)
        else:
            types[i] = int(TokenType.NORMAL)

    added_path = folder / "added_tokens.json"
    if added_path.is_file():
        for text, token_id in _read_json(added_path).items():
            token_id = int(token_id)
            if token_id >= vocab_size:
                raise ConvertError(f"{added_path}: token {text!r} has id {token_id} >= vocab_size {vocab_size}")
            tokens[token_id] = text.encode("utf-8")
            scores[token_id] = -1000.0
            types[token_id] = int(TokenType.USER_DEFINED)

    tok_config_path = folder / "tokenizer_config.json"
    tok_config = _read_json(tok_config_path) if tok_config_path.is_file() else {}
    for key, data in tok_config.get("added_tokens_decoder", {}).items():
        token_id = int(key)
        text = data["content"]
        if token_id >= vocab_size:
            raise ConvertError(f"{tok_config_path}: added token {text!r} has id {token_id} >= vocab_size {vocab_size}")
        if data.get("special"):
            types[token_id] = int(TokenType.CONTROL)
        else:
            text = text.replace("\u2581", " ")
            types[token_id] = int(TokenType.USER_DEFINED)
        tokens[token_id] = text.encode("utf-8")
        scores[token_id] = -1000.0

    ids: dict[bytes, int] = {}
    for i, t in enumerate(tokens):
        ids.setdefault(t, i)

    def id_of(value: Any) -> Optional[int]:
        text = _token_content(value)
        return None if text is None else ids.get(text.encode("utf-8"))

    def config_id(key: str) -> Optional[int]:
        value = config.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None:
            return None
        if not 0 <= int(value) < vocab_size:
            raise ConvertError(f"config.json {key} = {value} is outside the vocabulary of {vocab_size}")
        return int(value)

    def sp_id(value: int) -> Optional[int]:
        return value if value >= 0 else None

    bos = config_id("bos_token_id")
    bos = bos if bos is not None else id_of(tok_config.get("bos_token"))
    bos = bos if bos is not None else sp_id(sp.bos_id())
    eos = config_id("eos_token_id")
    eos = eos if eos is not None else id_of(tok_config.get("eos_token"))
    eos = eos if eos is not None else sp_id(sp.eos_id())
    pad = config_id("pad_token_id")
    pad = pad if pad is not None else id_of(tok_config.get("pad_token"))
    pad = pad if pad is not None else sp_id(sp.pad_id())

    eot: Optional[int] = None
    for piece in _EOT_PIECES:
        if piece.encode() in ids:
            eot = ids[piece.encode()]
            break
    if eot is None:
        tok_eos = id_of(tok_config.get("eos_token"))
        if tok_eos is not None and tok_eos != eos:
            eot = tok_eos

    return Vocab(
        tokens=tokens, scores=scores, types=types,
        bos=bos, eos=eos, unk=sp_id(sp.unk_id()), pad=pad, eot=eot,
        add_bos=bool(tok_config.get("add_bos_token", True)),
        add_eos=bool(tok_config.get("add_eos_token", False)),
        add_space_prefix=sentencepiece_add_dummy_prefix(model_bytes),
        chat_template=_chat_template(tok_config, tok_config_path),
    )


def add_vocab(plan: ModelPlan, vocab: Vocab) -> None:
    plan.string("tokenizer.ggml.model", "llama")
    plan.array("tokenizer.ggml.tokens", vocab.tokens, GGUFValueType.STRING)
    plan.array("tokenizer.ggml.scores", vocab.scores, GGUFValueType.FLOAT32)
    plan.array("tokenizer.ggml.token_type", vocab.types, GGUFValueType.INT32)
    for key, value in (("bos_token_id", vocab.bos), ("eos_token_id", vocab.eos), ("eot_token_id", vocab.eot),
                       ("unknown_token_id", vocab.unk), ("padding_token_id", vocab.pad)):
        if value is not None:
            plan.u32(f"tokenizer.ggml.{key}", value)
    plan.boolean("tokenizer.ggml.add_bos_token", vocab.add_bos)
    plan.boolean("tokenizer.ggml.add_eos_token", vocab.add_eos)
    plan.boolean("tokenizer.ggml.add_space_prefix", vocab.add_space_prefix)
    if vocab.chat_template:
        plan.string("tokenizer.chat_template", vocab.chat_template)

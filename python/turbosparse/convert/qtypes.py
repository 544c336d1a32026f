"""Output types: which ggml type each tensor gets, and float32 -> that type's bytes.

Quantisation to q8_0/q4_0 is gguf.quants (a numpy port of ggml's reference quantisers; the
tests check its blocks byte for byte against libggml's ggml_quantize_chunk); the K-quants and
their fallbacks (q4_K, q5_K, q6_K, q5_0, q5_1) go through the pinned ggml's own
ggml_quantize_chunk, so their blocks are llama-quantize's. Rows are encoded in chunks so the
temporaries stay a constant size whatever the tensor. The K-quant mixes are kmix.py.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf import quants

from .errors import ConvertError
from .ggml_quantize import ggml_quantize

Q = GGMLQuantizationType

OUTTYPES: dict[str, GGMLQuantizationType] = {
    "f32": Q.F32,
    "f16": Q.F16,
    "bf16": Q.BF16,
    "q8_0": Q.Q8_0,
    "q4_0": Q.Q4_0,
}

# general.file_type for each --outtype, as llama.cpp numbers them
FILE_TYPES: dict[str, int] = {
    "f32": int(LlamaFileType.ALL_F32),
    "f16": int(LlamaFileType.MOSTLY_F16),
    "bf16": int(LlamaFileType.MOSTLY_BF16),
    "q8_0": int(LlamaFileType.MOSTLY_Q8_0),
    "q4_0": int(LlamaFileType.MOSTLY_Q4_0),
    "q4_k_m": int(LlamaFileType.MOSTLY_Q4_K_M),
    "q4_k_s": int(LlamaFileType.MOSTLY_Q4_K_S),
    "q5_k_m": int(LlamaFileType.MOSTLY_Q5_K_M),
    "q6_k": int(LlamaFileType.MOSTLY_Q6_K),
}

# types encoded by ggml's own quantiser (the mixes' types and llama.cpp's fallbacks for them)
GGML_QUANTISED = frozenset({Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q5_0, Q.Q5_1})

SUPPORTED = frozenset(OUTTYPES.values()) | GGML_QUANTISED

_F16_MAX = 65504.0
_CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 per encoding step


class Role(Enum):
    """What a tensor is, which decides its type."""
    NORM = "norm"            # RMSNorm weights: always f32
    WEIGHT = "weight"        # attention, FFN, embeddings: --outtype
    OUTPUT = "output"        # lm head: --outtype, but q8_0 when --outtype is q4_0
    ROUTER = "router"        # MoE gate: at least f16
    PREDICTOR = "predictor"  # --predictor-type


def is_quantized(qtype: GGMLQuantizationType) -> bool:
    return GGML_QUANT_SIZES[qtype][0] > 1


def choose_type(role: Role, shape: tuple[int, ...], outtype: GGMLQuantizationType,
                predictor_type: GGMLQuantizationType) -> GGMLQuantizationType:
    if role is Role.NORM or len(shape) < 2:
        return Q.F32
    if role is Role.ROUTER:
        return Q.F32 if outtype == Q.F32 else Q.F16
    if role is Role.PREDICTOR:
        chosen = predictor_type
    elif role is Role.OUTPUT and outtype == Q.Q4_0:
        chosen = Q.Q8_0  # the lm head is the most sensitive matrix, as llama.cpp keeps it higher
    else:
        chosen = outtype
    block = GGML_QUANT_SIZES[chosen][0]
    if shape[-1] % block != 0:
        return Q.F16  # rows that are not whole blocks cannot be quantised
    return chosen


def nbytes_of(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, type_size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    return n // block * type_size


def check_finite(data: np.ndarray, where: str) -> None:
    if not np.isfinite(data).all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(np.isinf(data).sum())
        raise ConvertError(f"{where} contains {n_nan} NaN and {n_inf} Inf values")


def encode(data: np.ndarray, qtype: GGMLQuantizationType, where: str) -> np.ndarray:
    """float32 array -> a flat array holding the ggml bytes of `qtype` for it (row-major).

    Checks and encoding go chunk by chunk so their temporaries stay a constant size.
    """
    if data.dtype != np.float32:
        raise TypeError(f"encode expects float32, got {data.dtype}")
    if qtype not in SUPPORTED:
        raise ConvertError(f"{where}: output type {qtype.name} is not supported")
    row = data.shape[-1] if data.ndim else 1
    rows = np.ascontiguousarray(data).reshape(-1, row)
    out_row_bytes = nbytes_of((row,), qtype)
    out = rows.view(np.uint8) if qtype == Q.F32 else np.empty((rows.shape[0], out_row_bytes), dtype=np.uint8)
    step = max(1, _CHUNK_ELEMENTS // max(row, 1))
    for r0 in range(0, rows.shape[0], step):
        chunk = rows[r0:r0 + step]
        if not np.isfinite(chunk).all():
            check_finite(data, where)
        if qtype == Q.F32:
            continue
        if qtype in GGML_QUANTISED:
            out[r0:r0 + step] = ggml_quantize(chunk, qtype)
            continue
        if qtype == Q.F16:
            peak = float(np.abs(chunk).max()) if chunk.size else 0.0
            if peak > _F16_MAX:
                raise ConvertError(f"{where} has values up to {peak:g}, beyond f16's range; "
                                   "use --outtype bf16 or f32")
            out[r0:r0 + step] = chunk.astype(np.float16).view(np.uint8)
        else:
            out[r0:r0 + step] = quants.quantize(chunk, qtype).reshape(chunk.shape[0], out_row_bytes)
    return out.reshape(-1)


def decode(raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> np.ndarray:
    """ggml bytes (or a typed view) of `qtype` -> float32 array of `shape` (numpy order)."""
    if qtype == Q.F32:
        return np.asarray(raw).view(np.float32).reshape(shape).astype(np.float32)
    if qtype == Q.F16:
        return np.asarray(raw).view(np.float16).reshape(shape).astype(np.float32)
    try:
        flat = quants.dequantize(np.asarray(raw).view(np.uint8).reshape(-1), qtype)
    except NotImplementedError as e:
        raise ConvertError(f"cannot dequantize type {qtype.name}") from e
    return flat.reshape(shape).astype(np.float32, copy=False)

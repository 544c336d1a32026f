"""The converter's encoded tensors are byte-identical to ggml's own quantiser (libggml-base's
ggml_quantize_chunk, called through ctypes) for f16, bf16, q8_0 and q4_0."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from ggml_quant import ggml_encode, libggml_base
from turbosparse.convert.errors import ConvertError
from turbosparse.convert.qtypes import Role, choose_type, encode

Q = GGMLQuantizationType


@pytest.fixture(scope="module")
def ggml() -> ctypes.CDLL:
    return libggml_base()


def tricky_rows(rng: np.random.Generator, n_per_row: int) -> np.ndarray:
    """Random rows plus the cases where rounding differs between careless implementations."""
    rows = [
        rng.standard_normal(n_per_row) * 0.02,
        rng.standard_normal(n_per_row) * 50.0,
        np.zeros(n_per_row),                                          # all-zero blocks: d = 0
        np.full(n_per_row, -3.0),                                     # the max-magnitude value negative
        np.tile([0.5, -0.5, 1.5, 2.5, -2.5, 127.0, 1e-8, -1e-30], n_per_row // 8),  # .5 ties
        rng.uniform(-1, 1, n_per_row) * np.repeat(10.0 ** rng.integers(-6, 4, n_per_row // 32), 32),
        (rng.standard_normal(n_per_row) * 300).round() / 7,          # many exact ties after scaling
        np.linspace(-1, 1, n_per_row) * 65000.0,                      # near f16's max
    ]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0])
def test_blocks_identical_to_ggml(ggml: ctypes.CDLL, qtype: Q) -> None:
    rng = np.random.default_rng(1234 + int(qtype))
    for n_per_row in (32, 256, 4096):
        data = np.concatenate([tricky_rows(rng, n_per_row),
                               rng.standard_normal((13, n_per_row)).astype(np.float32)])
        ours = encode(data, qtype, "test tensor")
        theirs = ggml_encode(data, qtype)
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{qtype.name} n_per_row={n_per_row}")


def test_chunked_encoding_equals_whole(ggml: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> None:
    import turbosparse.convert.qtypes as qt

    rng = np.random.default_rng(7)
    data = rng.standard_normal((37, 96)).astype(np.float32)
    whole = ggml_encode(data, Q.Q4_0)
    monkeypatch.setattr(qt, "_CHUNK_ELEMENTS", 96 * 5)  # 5 rows a step, the last step partial
    np.testing.assert_array_equal(encode(data, Q.Q4_0, "t"), whole)


def test_encode_rejects_non_finite_and_f16_overflow() -> None:
    data = np.ones((2, 32), dtype=np.float32)
    data[1, 3] = np.nan
    with pytest.raises(ConvertError, match="tensor 'x' contains 1 NaN and 0 Inf"):
        encode(data, Q.F32, "tensor 'x'")
    data[1, 3] = -np.inf
    with pytest.raises(ConvertError, match="0 NaN and 1 Inf"):
        encode(data, Q.Q8_0, "tensor 'x'")
    data[1, 3] = 1e6
    with pytest.raises(ConvertError, match="beyond f16's range"):
        encode(data, Q.F16, "tensor 'x'")
    assert encode(data, Q.BF16, "x").nbytes == 2 * data.size


def test_type_policy() -> None:
    assert choose_type(Role.NORM, (4096,), Q.Q4_0, Q.Q4_0) == Q.F32
    assert choose_type(Role.WEIGHT, (4096,), Q.F16, Q.F16) == Q.F32          # any 1-D tensor
    assert choose_type(Role.ROUTER, (8, 4096), Q.Q4_0, Q.Q4_0) == Q.F16
    assert choose_type(Role.ROUTER, (8, 4096), Q.F32, Q.F32) == Q.F32
    assert choose_type(Role.OUTPUT, (32000, 4096), Q.Q4_0, Q.Q4_0) == Q.Q8_0
    assert choose_type(Role.OUTPUT, (32000, 4096), Q.BF16, Q.BF16) == Q.BF16
    assert choose_type(Role.PREDICTOR, (14336, 1024), Q.Q4_0, Q.F16) == Q.F16
    assert choose_type(Role.PREDICTOR, (14336, 1000), Q.Q8_0, Q.Q8_0) == Q.F16  # 1000 % 32 != 0
    assert choose_type(Role.WEIGHT, (14336, 4096), Q.Q8_0, Q.Q8_0) == Q.Q8_0

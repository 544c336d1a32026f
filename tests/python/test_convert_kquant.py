"""--outtype q4_k_m / q4_k_s / q5_k_m / q6_k: blocks byte-identical to ggml's quantiser, the
per-tensor types of llama.cpp's mixes on a tiny model, and the converted model running in
every FFN mode close to the f32 file's logits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from ggml_quant import ggml_encode
from hf_fixtures import write_tiny_checkpoint
from runtime_api import Context, Model
from turbosparse.convert.qtypes import encode

Q = GGMLQuantizationType
TOKENS = [1, 40, 7, 211, 99, 3, 150, 64, 12, 250]


def convert(folder: Path, out: Path, outtype: str) -> Path:
    r = subprocess.run([sys.executable, "-m", "turbosparse.convert", str(folder), "--outfile", str(out),
                        "--outtype", outtype, "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def types_of(path: Path) -> dict[str, Q]:
    return {t.name: Q(int(t.tensor_type)) for t in GGUFReader(path).tensors}


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q5_0, Q.Q5_1])
def test_blocks_identical_to_ggml(qtype: Q) -> None:
    rng = np.random.default_rng(99 + int(qtype))
    for n_per_row in (256, 2048):
        data = np.concatenate([
            rng.standard_normal((5, n_per_row)) * 0.02,
            np.zeros((1, n_per_row)),
            rng.uniform(-1, 1, (3, n_per_row)) * np.repeat(10.0 ** rng.integers(-6, 4, (3, n_per_row // 32)), 32, axis=1),
        ]).astype(np.float32)
        np.testing.assert_array_equal(encode(data, qtype, "t"), ggml_encode(data, qtype),
                                      err_msg=f"{qtype.name} n_per_row={n_per_row}")


# llama.cpp's "more bits" layers of an 8-layer model: i < 1, i >= 7, (i - 1) % 3 == 2
MORE_BITS_8 = {0, 3, 6, 7}


@pytest.mark.parametrize("mix", ["q4_k_m", "q4_k_s", "q5_k_m", "q6_k"])
def test_mix_table(tmp_path: Path, mix: str) -> None:
    write_tiny_checkpoint(tmp_path / "hf", arch="bamboo", n_layer=8, n_embd=256, n_ff=96, dtype="f32", seed=5)
    types = types_of(convert(tmp_path / "hf", tmp_path / "m.gguf", mix))
    base = {"q4_k_m": Q.Q4_K, "q4_k_s": Q.Q4_K, "q5_k_m": Q.Q5_K, "q6_k": Q.Q6_K}[mix]
    expect: dict[str, Q] = {"token_embd.weight": base, "output.weight": Q.Q6_K, "output_norm.weight": Q.F32}
    for i in range(8):
        blk = f"blk.{i}"
        v = down = base
        if mix in ("q4_k_m", "q5_k_m") and i in MORE_BITS_8:
            v = down = Q.Q6_K
        if mix == "q4_k_s":
            v = Q.Q5_K if i < 4 else base
            down = Q.Q5_K if i < 1 else base
        expect.update({f"{blk}.attn_q.weight": base, f"{blk}.attn_k.weight": base, f"{blk}.attn_v.weight": v,
                       f"{blk}.attn_output.weight": base, f"{blk}.ffn_gate.weight": base,
                       f"{blk}.ffn_up.weight": base, f"{blk}.ffn_down_t.weight": down,
                       f"{blk}.attn_norm.weight": Q.F32, f"{blk}.ffn_norm.weight": Q.F32})
        # predictor fc1 rows are n_embd = 256 long: the base type; fc2 rows are the rank (32 or
        # 48): llama.cpp's fallback q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0, and f16 for 48
        fallback = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}[base]
        expect[f"{blk}.ffn_pred_fc1.weight"] = base
        expect[f"{blk}.ffn_pred_fc2.weight"] = fallback if i % 2 == 0 else Q.F16
    assert {k: types[k] for k in expect} == expect
    assert set(types) == set(expect)


def test_dense_down_rows_fall_back(tmp_path: Path) -> None:
    # a SwiGLU model keeps ffn_down standard: rows of n_ff = 96, not whole 256-blocks: q4_K
    # falls back to q5_0, and q6_K (the more-bits layers: of 2, the last) to q8_0
    write_tiny_checkpoint(tmp_path / "hf", arch="llama", n_layer=2, n_embd=256, n_ff=96, dtype="f32", seed=6)
    types = types_of(convert(tmp_path / "hf", tmp_path / "m.gguf", "q4_k_m"))
    assert types["blk.0.ffn_down.weight"] == Q.Q5_0
    assert types["blk.1.ffn_down.weight"] == Q.Q8_0
    assert types["blk.0.ffn_gate.weight"] == Q.Q4_K


@pytest.mark.parametrize("mix, tol", [("q4_k_m", 0.35), ("q6_k", 0.1)])
def test_converted_runs_in_every_mode(tmp_path: Path, mix: str, tol: float) -> None:
    """Against the f32 file of the same checkpoint: bounds the quantisation error (measured on
    this 256-wide random model: q4_k_m ~0.20, q6_k ~0.05; q4_0 is held to 0.35 vs HF in
    test_runtime_converted.py); predicted mode more loosely, as a predictor logit near the
    threshold may fall on the other side with quantised weights (q6_k measured ~0.10). The
    arithmetic alone is the next test's."""
    write_tiny_checkpoint(tmp_path / "hf", arch="bamboo", n_layer=2, n_embd=256, n_ff=96, dtype="f32", seed=7)
    ref_model = Model(convert(tmp_path / "hf", tmp_path / "f32.gguf", "f32"))
    model = Model(convert(tmp_path / "hf", tmp_path / "k.gguf", mix))
    assert model.meta.has_predictor
    for mode in ("dense", "exact", "predicted"):
        ref = Context(ref_model, mode=mode).decode(TOKENS)
        got = Context(model, mode=mode).decode(TOKENS)
        assert np.isfinite(got).all()
        err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
        assert err < (0.35 if mode == "predicted" else tol), (mix, mode, err)


def logits_in_subprocess(path: Path, mode: str, out: Path, env: dict[str, str]) -> np.ndarray:
    """Logits from a fresh process (the runtime reads TURBOSPARSE_MATMUL once per process)."""
    code = ("import sys, numpy as np; sys.path.insert(0, %r); from runtime_api import Context, Model; "
            "np.save(%r, Context(Model(%r), mode=%r).decode(%r))" % (str(Path(__file__).parent), str(out), str(path),
                                                                  mode, TOKENS))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    return np.load(out)


def test_kquant_kernels_agree_with_ggml_in_the_runtime(tmp_path: Path) -> None:
    """The arithmetic alone: on the same q4_K/q6_K file, the dense products by ggml's own
    mul_mat (TURBOSPARSE_MATMUL=ggml: vec_dot_q4_K_q8_K, vec_dot_q6_K_q8_K) against ours, and
    exact mode (our sparse gate/up/down kernels) against that: the same Q8_K activations and
    integer sums, so only the float rounding order differs."""
    write_tiny_checkpoint(tmp_path / "hf", arch="bamboo", n_layer=2, n_embd=256, n_ff=256, dtype="f32", seed=8)
    path = convert(tmp_path / "hf", tmp_path / "k.gguf", "q4_k_m")
    types = types_of(path)
    assert {types[n] for n in ("blk.0.ffn_gate.weight", "blk.0.ffn_down_t.weight", "output.weight")} == {Q.Q4_K, Q.Q6_K}
    ggml = logits_in_subprocess(path, "dense", tmp_path / "ggml.npy", {"TURBOSPARSE_MATMUL": "ggml"})
    for mode, env in (("dense", {"TURBOSPARSE_MATMUL": "ours"}), ("exact", {"TURBOSPARSE_MATMUL": "ggml"}),
                      ("exact", {"TURBOSPARSE_MATMUL": "ours"})):
        got = logits_in_subprocess(path, mode, tmp_path / "got.npy", env)
        err = float(np.max(np.abs(got - ggml)) / np.max(np.abs(ggml)))
        assert err < 1e-4, (mode, env, err)  # measured ~3e-7

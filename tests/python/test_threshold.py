"""The threshold (CATS) FFN mode of SwiGLU models: the runtime against a numpy reference that
applies the same masks (|silu(gate)| >= the layer's threshold), -inf thresholds against the
dense mode, the file rewrite that adds ffn_down_t and thresholds, and the errors.

Bit-identity at -inf (what the kernels can promise): in a file whose only down projection is
neuron-major (down_layout neuron_major) the dense mode also runs the sparse down node over
every non-zero activation, and the threshold mode's up values are dot_rows results, which are
ggml_sparse_matmul's bits; ggml's silu op gives the bits its swiglu multiplies by. So where
our matmul reads ffn_up in the dense mode (TURBOSPARSE_MATMUL=ours, or auto on AVX-512) the
two modes agree bit for bit. Against ggml's own dense FFN (ffn_down in the standard layout,
ggml's mul_mat) they cannot: ggml's down product rounds the activations to Q8_0 blocks (for
Q8_0/Q4_0 weights) and sums in another order, while the sparse down node sums f32
activations times weight rows; there the test bounds the difference by the quantised
tolerance of the runtime tests.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numpy_reference import attention, rms_norm, silu
from runtime_api import Context, Model, RuntimeError_
from tiny_gguf import random_weights, tiny_config, write_gguf

TOKENS = [1, 5, 17, 300, 42, 9, 100, 7, 260, 33, 2, 64]


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def q8(x: np.ndarray) -> np.ndarray:
    """x as the Q8_0/Q4_0 kernels see it: rounded to Q8_0 blocks (ggml's quantiser)."""
    from gguf import GGMLQuantizationType as QT
    from gguf import quants
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    return quants.dequantize(quants.quantize(x32, QT.Q8_0), QT.Q8_0).reshape(x.shape).astype(np.float64)


def forward_masked(cfg, w: dict, tokens: list[int], thresholds: list[float],
                   q8_ffn: bool = False) -> tuple[np.ndarray, list, float]:
    """Logits with layer l's FFN keeping the neurons with |silu(g)| >= thresholds[l]; the masks,
    and the smallest | |silu(g)| - threshold | seen (a mask bit nearer its cut than float32
    arithmetic can decide would make the comparison meaningless). q8_ffn: the FFN input
    rounded to Q8_0 as the quantised kernels round it, so the gates (and masks) are theirs."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}
    pos = np.arange(len(tokens))
    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    masks, margin = [], math.inf
    for il in range(cfg.n_layer):
        p = f"model.layers.{il}"
        h = rms_norm(x, w[f"{p}.input_layernorm.weight"], cfg.rms_eps)
        resid = x + attention(cfg, w, f"{p}.self_attn", h, pos)
        f_in = rms_norm(resid, w[f"{p}.post_attention_layernorm.weight"], cfg.rms_eps)
        f_in = q8(f_in) if q8_ffn else f_in
        s = silu(f_in @ w[f"{p}.mlp.gate_proj.weight"].T)
        keep = np.abs(s) >= thresholds[il]
        if math.isfinite(thresholds[il]):
            margin = min(margin, float(np.min(np.abs(np.abs(s) - thresholds[il]))))
        masks.append(keep)
        a = np.where(keep, s * (f_in @ w[f"{p}.mlp.up_proj.weight"].T), 0.0)
        x = resid + a @ w[f"{p}.mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], cfg.rms_eps)
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T, masks, margin


def make(tmp_path: Path, outtype: str = "f32", seed: int = 3, neuron_major: bool = False, **kw):
    cfg = tiny_config("swiglu")
    w = random_weights(cfg, seed)
    path = tmp_path / f"swiglu-{outtype}.gguf"
    held = write_gguf(path, cfg, w, outtype, neuron_major=neuron_major, **kw)
    return cfg, held, path


def with_thresholds(src: Path, dst: Path, thresholds: list[float] | None, down_type: str | None = None) -> Path:
    from turbosparse.convert.sparse_ffn import rewrite
    return rewrite(src, dst, thresholds=thresholds, down_type=down_type)


def quantile_thresholds(cfg, held: dict, tokens: list[int], share: float, q8_ffn: bool) -> list[float]:
    """Per-layer cuts that skip about `share` of the neurons on `tokens`: each in the widest
    gap between the sorted |silu(g)| of ranks 0.7..1.3 x share (masked forward), so that no
    value lies near a cut."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in held.items()}
    pos = np.arange(len(tokens))
    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    out = []
    for il in range(cfg.n_layer):
        p = f"model.layers.{il}"
        h = rms_norm(x, w[f"{p}.input_layernorm.weight"], cfg.rms_eps)
        resid = x + attention(cfg, w, f"{p}.self_attn", h, pos)
        f_in = rms_norm(resid, w[f"{p}.post_attention_layernorm.weight"], cfg.rms_eps)
        f_in = q8(f_in) if q8_ffn else f_in
        s = silu(f_in @ w[f"{p}.mlp.gate_proj.weight"].T)
        srt = np.sort(np.abs(s).reshape(-1))
        lo, hi = int(0.7 * share * srt.size), int(1.3 * share * srt.size)
        k = lo + int(np.argmax(np.diff(srt[lo:hi + 1])))
        out.append(float((srt[k] + srt[k + 1]) / 2))
        a = np.where(np.abs(s) >= out[-1], s * (f_in @ w[f"{p}.mlp.up_proj.weight"].T), 0.0)
        x = resid + a @ w[f"{p}.mlp.down_proj.weight"].T
    return out


# (weights, logits tolerance as in test_runtime, least distance of any |silu(g)| from its cut:
# quantised types see x rounded to Q8_0 blocks, so their gates move by ~1e-3 and fewer tokens
# leave wider gaps)
CASES = [("f32", 1e-4, 1e-4, TOKENS), ("q8_0", 3e-2, 1e-3, TOKENS[:5]), ("q4_0", 3e-2, 1e-3, TOKENS[:5])]


@pytest.mark.parametrize("outtype,tol,min_margin,tokens", CASES)
def test_threshold_matches_masked_reference(tmp_path, outtype, tol, min_margin, tokens):
    """At ~50% sparsity per layer: the logits match the numpy reference with the same masks,
    the per-layer density counts exactly those masks, and 1, 2 and 3 threads agree bit for bit
    (down_t f32 so that the reference holds the file's exact down values)."""
    cfg, held, path = make(tmp_path, outtype)
    cuts = quantile_thresholds(cfg, held, tokens, 0.5, outtype != "f32")
    out = with_thresholds(path, tmp_path / "thr.gguf", cuts, down_type="f32")
    ref, masks, margin = forward_masked(cfg, held, tokens, cuts, q8_ffn=outtype != "f32")
    assert margin > min_margin  # every mask bit is decided far from the runtime's rounding
    model = Model(out)
    assert model.meta.has_down_t == 1 and model.meta.has_act_thresholds == 1
    got = []
    for n_threads in (1, 2, 3):
        ctx = Context(model, mode="threshold", n_threads=n_threads)
        got.append(ctx.decode(tokens))
        for il in range(cfg.n_layer):
            # f32: the very masks; quantised: the FFN input the kernels round to Q8_0 differs
            # from the reference's by the attention's rounding, which can move a rounded
            # element a whole step, and so a gate near its cut: allow two such flips
            assert ctx.layer_density(il) == pytest.approx(float(np.mean(masks[il])),
                                                          abs=1e-12 if outtype == "f32" else 2.5 / masks[il].size)
    assert rel_err(got[0], ref) < tol
    assert all(np.array_equal(g, got[0]) for g in got[1:])
    # the sparsity matters: dense logits differ from the masked ones by more than the tolerance
    dense = Context(model, mode="dense").decode(tokens)
    assert rel_err(dense, got[0]) > 10 * (tol if outtype == "f32" else 1e-3)
    # auto picks the threshold mode for a calibrated file
    assert lib_mode(Context(model)) == 3


def lib_mode(ctx: Context) -> int:
    from runtime_api import lib
    return int(lib.ts_context_ffn_mode(ctx.ptr))


BITS_SCRIPT = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from runtime_api import Context, Model
m = Model(sys.argv[2])
toks = [1, 5, 17, 300, 42, 9, 100, 7, 260, 33, 2, 64]
for n in (1, 2):
    d = Context(m, mode="dense", n_threads=n).decode(toks)
    t = Context(m, mode="threshold", n_threads=n)
    t.set_act_thresholds([-float("inf")] * m.meta.n_layer)
    got = t.decode(toks)
    assert np.array_equal(d, got), (n, float(np.max(np.abs(d - got))))
    one = Context(m, mode="threshold", n_threads=n)
    one.set_act_thresholds([-float("inf")] * m.meta.n_layer)
    last = [one.decode([tk]) for tk in toks][-1]
    assert np.array_equal(last[0], got[-1])   # token by token = the batch, bit for bit
print("ok")
"""


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0"])
def test_minus_inf_is_dense_bit_for_bit(tmp_path, outtype):
    """Thresholds of -inf give the dense mode's logits bit for bit on a neuron-major file where
    our matmul reads ffn_up in the dense mode (TURBOSPARSE_MATMUL=ours; see the module doc)."""
    _, _, path = make(tmp_path, outtype, neuron_major=True)
    out = with_thresholds(path, tmp_path / "thr.gguf", [0.0, 0.0])
    env = dict(os.environ, TURBOSPARSE_MATMUL="ours")
    r = subprocess.run([sys.executable, "-c", BITS_SCRIPT, str(Path(__file__).parent), str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0"])
def test_minus_inf_near_ggml_dense(tmp_path, outtype):
    """Against ggml's own dense FFN (standard ffn_down, added ffn_down_t of the same type) at
    -inf: not bit for bit (module doc), within the quantised tolerance of the runtime tests."""
    cfg, held, path = make(tmp_path, outtype)
    out = with_thresholds(path, tmp_path / "thr.gguf", [-math.inf] * cfg.n_layer, down_type="f32")
    model = Model(out)
    dense = Context(model, mode="dense").decode(TOKENS)
    ctx = Context(model, mode="threshold")
    thr = ctx.decode(TOKENS)
    assert rel_err(thr, dense) < 3e-2
    assert ctx.stats().ffn_density == 1.0


def test_rewrite_keeps_everything_else(tmp_path):
    """The rewrite copies every tensor byte for byte and every key, adds ffn_down_t (the
    transpose of ffn_down, exact for f32) and the threshold keys; llama.cpp's ffn_down stays."""
    from gguf import GGUFReader
    cfg, held, path = make(tmp_path, "f32", plain_llamacpp=True)
    out = with_thresholds(path, tmp_path / "thr.gguf", [0.1, 0.2])
    a, b = GGUFReader(path), GGUFReader(out)
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    assert set(tb) == set(ta) | {f"blk.{i}.ffn_down_t.weight" for i in range(cfg.n_layer)}
    for name, t in ta.items():
        np.testing.assert_array_equal(np.asarray(tb[name].data), np.asarray(t.data), err_msg=name)
    for i in range(cfg.n_layer):
        np.testing.assert_array_equal(np.asarray(tb[f"blk.{i}.ffn_down_t.weight"].data),
                                      np.asarray(ta[f"blk.{i}.ffn_down.weight"].data).T)
    for key in a.fields:
        if not key.startswith("GGUF."):
            assert key in b.fields, key
    vals = b.fields["turbosparse.act_threshold.values"]
    assert [float(vals.parts[i][0]) for i in vals.data] == pytest.approx([0.1, 0.2])
    assert bytes(b.fields["turbosparse.down_layout"].parts[-1]).decode() == "both"


def test_errors(tmp_path):
    cfg, held, path = make(tmp_path, "f32")
    model = Model(path)
    with pytest.raises(RuntimeError_, match="ffn_down_t"):
        Context(model, mode="threshold")
    down_t_only = with_thresholds(path, tmp_path / "dt.gguf", None)
    with pytest.raises(RuntimeError_, match="thresholds"):
        Context(Model(down_t_only), mode="threshold")
    assert lib_mode(Context(Model(down_t_only))) == 0  # auto: no thresholds -> dense
    ctx = Context(Model(with_thresholds(path, tmp_path / "t.gguf", [0.1, 0.1])), mode="threshold")
    with pytest.raises(RuntimeError_, match="expected 2 thresholds"):
        ctx.set_act_thresholds([0.1])
    with pytest.raises(RuntimeError_, match="NaN"):
        ctx.set_act_thresholds([0.1, float("nan")])
    # a ReGLU model: no threshold mode, no rewrite
    rcfg = tiny_config("reglu")
    rpath = tmp_path / "reglu.gguf"
    write_gguf(rpath, rcfg, random_weights(rcfg, 1))
    with pytest.raises(RuntimeError_, match="SwiGLU"):
        Context(Model(rpath), mode="threshold")
    from turbosparse.convert.errors import ConvertError
    with pytest.raises(ConvertError, match="SwiGLU"):
        with_thresholds(rpath, tmp_path / "r2.gguf", [0.1, 0.1])
    with pytest.raises(ConvertError, match="2 layers"):
        with_thresholds(path, tmp_path / "x.gguf", [0.1])


def corpus(n_words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "far", "away", "into", "hills",
             "where", "no", "one", "could", "see", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    return " ".join(rng.choice(words, n_words))


@pytest.mark.parametrize("target", [0.4, 0.6])
def test_calibration_reaches_target_on_held_out(tmp_path, target):
    """ts-calibrate-sparsity's calibrate() on a tiny SwiGLU checkpoint (a plain llama.cpp file:
    ffn_down_t is added): the held-out sparsity is within 2 points of the target on average and
    4 points in every layer, the file runs in auto mode as 'threshold', and the written cuts
    are the ones reported."""
    from turbosparse.calibrate import calibrate
    cfg, held, path = make(tmp_path, "q8_0", plain_llamacpp=True)
    out = tmp_path / "cal.gguf"
    r = calibrate(path, target, corpus(1500, 0), outfile=out, n_ctx=64, n_threads=1, progress=False)
    assert abs(r.mean_held_out - target) <= 0.02, r.held_out_sparsity
    assert all(abs(s - target) <= 0.04 for s in r.held_out_sparsity), r.held_out_sparsity
    assert r.n_held_tokens >= 32 and r.n_cal_tokens >= 256
    model = Model(out)
    ctx = Context(model)
    assert lib_mode(ctx) == 3
    from runtime_api import ffi, lib
    buf = ffi.new("float[]", cfg.n_layer)
    assert lib.ts_context_get_act_thresholds(ctx.ptr, buf, cfg.n_layer) == 0
    assert list(buf) == pytest.approx(r.thresholds, rel=0, abs=0)


def test_calibration_errors(tmp_path):
    from turbosparse.calibrate import CalibrateError, calibrate, main
    cfg, held, path = make(tmp_path, "f32", plain_llamacpp=True)
    with pytest.raises(CalibrateError, match="need at least"):
        calibrate(path, 0.4, corpus(40, 1), outfile=tmp_path / "o.gguf", progress=False)
    with pytest.raises(CalibrateError, match="target"):
        calibrate(path, 1.5, corpus(1500, 1), outfile=tmp_path / "o.gguf", progress=False)
    rcfg = tiny_config("reglu")
    rpath = tmp_path / "reglu.gguf"
    write_gguf(rpath, rcfg, random_weights(rcfg, 1))
    with pytest.raises(CalibrateError, match="SwiGLU"):
        calibrate(rpath, 0.4, corpus(1500, 1), outfile=tmp_path / "o.gguf", progress=False)
    text = tmp_path / "t.txt"
    text.write_text(corpus(1500, 1))
    assert main([str(rpath), "--target", "0.4", "--text", str(text), "--quiet"]) == 1
    assert not (tmp_path / "o.gguf").exists()


def test_ts_main_and_perplexity_run_the_threshold_mode(tmp_path):
    """ts-main --ffn-mode threshold runs a calibrated file (and says so; auto picks it), refuses
    an uncalibrated one with the reason; ts-perplexity reports the mode with its per-layer share."""
    from test_ts_main import run
    from turbosparse.perplexity import main as ppl_main
    cfg, held, path = make(tmp_path, "q8_0", plain_llamacpp=True)
    cal = with_thresholds(path, tmp_path / "cal.gguf", [0.05, 0.05])
    for mode in ("threshold", None):
        r = run("-m", str(cal), "-p", "ab", "-n", "4", "--temp", "0", *(("--ffn-mode", mode) if mode else ()))
        assert r.returncode == 0, r.stderr
        assert "mode threshold" in r.stderr
    r = run("-m", str(path), "-p", "ab", "-n", "4", "--ffn-mode", "threshold")
    assert r.returncode != 0 and "ffn_down_t" in r.stderr
    text = tmp_path / "t.txt"
    text.write_text(corpus(300, 2))
    js = tmp_path / "p.json"
    assert ppl_main(["-m", str(cal), "-f", str(text), "-c", "32", "-t", "1", "--chunks", "3", "--json", str(js)]) == 0
    import json
    res = {r["mode"]: r for r in json.loads(js.read_text())["results"]}
    assert set(res) == {"dense", "threshold"}
    assert 0.0 < res["threshold"]["computed_share"] < 1.0 and res["dense"]["computed_share"] == 1.0
    assert len(res["threshold"]["layers"]) == cfg.n_layer


def test_convert_sparse_ffn(tmp_path):
    """convert-turbosparse --sparse-ffn on a SwiGLU checkpoint writes ffn_down and its exact
    transpose ffn_down_t (f32), layout both; a ReLU checkpoint is refused."""
    from gguf import GGUFReader
    from hf_fixtures import write_tiny_checkpoint
    from turbosparse.convert.cli import main as convert_main
    src = tmp_path / "llama"
    write_tiny_checkpoint(src, arch="llama", n_layer=2, dtype="f32", sharded=False)
    out = tmp_path / "out.gguf"
    assert convert_main([str(src), "--outfile", str(out), "--outtype", "f32", "--sparse-ffn", "--quiet"]) == 0
    r = GGUFReader(out)
    t = {x.name: np.asarray(x.data) for x in r.tensors}
    for i in range(2):
        np.testing.assert_array_equal(t[f"blk.{i}.ffn_down_t.weight"], t[f"blk.{i}.ffn_down.weight"].T)
    assert bytes(r.fields["turbosparse.down_layout"].parts[-1]).decode() == "both"
    m = Model(out)
    assert m.meta.has_down_t == 1 and m.meta.has_act_thresholds == 0
    relu = tmp_path / "relu"
    write_tiny_checkpoint(relu, arch="relu-llama", n_layer=2, dtype="f32", sharded=False)
    assert convert_main([str(relu), "--outfile", str(tmp_path / "r.gguf"), "--sparse-ffn", "--quiet",
                         "--no-predictor"]) == 1


def test_convert_from_gguf_adds_down_t(tmp_path):
    """convert-turbosparse --from-gguf FILE --sparse-ffn: a llama.cpp file gains ffn_down_t
    (q8_0 from --outtype), nothing else changes; the result then calibrates in place."""
    from gguf import GGUFReader
    from turbosparse.calibrate import calibrate, default_outfile
    from turbosparse.convert.cli import main as convert_main
    cfg, held, path = make(tmp_path, "f32", plain_llamacpp=True)
    out = tmp_path / "sparse.gguf"
    assert convert_main(["--from-gguf", str(path), "--sparse-ffn", "--outfile", str(out), "--outtype", "q8_0",
                         "--quiet"]) == 0
    r = GGUFReader(out)
    types = {t.name: int(t.tensor_type) for t in r.tensors}
    assert types["blk.0.ffn_down_t.weight"] == 8 and types["blk.0.ffn_down.weight"] == 0  # q8_0, f32 kept
    assert default_outfile(out) == out and default_outfile(path) == tmp_path / "swiglu-f32.threshold.gguf"
    with pytest.raises(SystemExit):  # --from-gguf without --sparse-ffn: an argparse error
        convert_main(["--from-gguf", str(path), "--outfile", str(tmp_path / "x.gguf"), "--quiet"])
    r2 = calibrate(out, 0.3, corpus(1200, 5), n_ctx=64, n_threads=1, passes=1, progress=False)
    assert r2.path == out and Model(out).meta.has_act_thresholds == 1

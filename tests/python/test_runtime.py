"""The runtime (turbosparse.h) against the independent numpy reference on tiny random models
of each architecture, and its error paths.

Tolerances (max |runtime - reference| / max |reference| over all logits):
- F32 weights, f32 KV cache: 1e-4 (float32 vs float64 summation order only).
- F16 weights: 5e-3 (ggml rounds activations to f16 for F16 matrix products).
- Q8_0 / Q4_0 weights: 3e-2 (ggml quantises activations to Q8_0 for quantised products).
- f16 KV cache (the default) with F32 weights: 5e-3 (K, V and Q·K rounded to f16).
The reference always computes on the values the file holds (dequantised), so these bound the
runtime's arithmetic, not the quantisation of the weights.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import turbosparse

from numpy_reference import RefTrace, forward
from runtime_api import Context, Model, RuntimeError_
from tiny_gguf import random_weights, tiny_config, write_gguf

TOKENS = [1, 5, 17, 300, 42, 9, 100, 7, 260, 33, 2, 64]

# (name, ffn kind, moe, predictor rank)
ARCHS = [
    ("bamboo_drelu_pred", "drelu", False, 32),
    ("relu_llama_reglu", "reglu", False, 0),
    ("dense_llama_swiglu", "swiglu", False, 0),
    ("turbosparsemixtral", "drelu", True, 16),
]
TOL = {"f32": 1e-4, "f16": 5e-3, "q8_0": 3e-2, "q4_0": 3e-2}


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def make(tmp_path: Path, which: str, outtype: str = "f32", seed: int = 1, **kw):
    name, kind, moe, rank = next(a for a in ARCHS if a[0] == which)
    over = {k: kw.pop(k) for k in list(kw) if k in ("sliding_window", "predictor_input", "head_dim_override",
                                                     "rope_linear_factor")}
    cfg = tiny_config(kind, moe=moe, **over)
    w = random_weights(cfg, seed, predictor_rank=rank, tied=kw.pop("tied", False))
    path = tmp_path / f"{name}-{outtype}.gguf"
    held = write_gguf(path, cfg, w, outtype, **kw)
    return cfg, held, path


def modes_of(arch: str) -> list[str]:
    _, kind, _, rank = next(a for a in ARCHS if a[0] == arch)
    if kind == "swiglu":
        return ["dense"]
    return ["dense", "exact"] + (["predicted"] if rank else [])


@pytest.mark.parametrize("arch", [a[0] for a in ARCHS])
def test_logits_match_reference_f32(tmp_path, arch):
    cfg, held, path = make(tmp_path, arch)
    model = Model(path)
    for mode in modes_of(arch):
        trace = RefTrace()
        ref = forward(cfg, held, TOKENS, mode="predicted" if mode == "predicted" else "dense", trace=trace)
        if mode == "predicted":
            assert trace.min_margin > 1e-4, "a predictor logit sits on the threshold: pick another seed"
            assert 0 < np.mean(np.concatenate(trace.masks)) < 1
        got = Context(model, mode=mode).decode(TOKENS)
        assert got.shape == ref.shape
        assert rel_err(got, ref) < TOL["f32"], (arch, mode)


@pytest.mark.parametrize("outtype", ["f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("arch", ["bamboo_drelu_pred", "dense_llama_swiglu", "turbosparsemixtral"])
def test_logits_match_reference_quantised(tmp_path, arch, outtype):
    """Dense and exact modes. Predicted mode is compared at F32 only: with rounded activations
    a predictor logit near the threshold may legitimately fall on the other side."""
    cfg, held, path = make(tmp_path, arch, outtype)
    model = Model(path)
    for mode in [m for m in modes_of(arch) if m != "predicted"]:
        ref = forward(cfg, held, TOKENS)
        got = Context(model, mode=mode).decode(TOKENS)
        assert rel_err(got, ref) < TOL[outtype], (arch, outtype, mode)


def test_f16_kv_cache(tmp_path):
    cfg, held, path = make(tmp_path, "bamboo_drelu_pred")
    ref = forward(cfg, held, TOKENS)
    got = Context(Model(path), mode="dense", kv_f32=False).decode(TOKENS)
    assert rel_err(got, ref) < 5e-3


@pytest.mark.parametrize("arch", ["bamboo_drelu_pred", "relu_llama_reglu", "turbosparsemixtral"])
def test_exact_equals_dense(tmp_path, arch):
    _, _, path = make(tmp_path, arch)
    model = Model(path)
    dense = Context(model, mode="dense").decode(TOKENS)
    exact = Context(model, mode="exact").decode(TOKENS)
    assert rel_err(exact, dense) < 1e-5


def test_predicted_threshold_override(tmp_path):
    """A raised threshold keeps fewer neurons; the runtime agrees with the reference's masks."""
    cfg, held, path = make(tmp_path, "bamboo_drelu_pred", threshold=0.0)
    model = Model(path)
    for tau in (0.0, 0.5):
        trace = RefTrace()
        ref = forward(cfg, held, TOKENS, mode="predicted", tau=tau, trace=trace)
        assert trace.min_margin > 1e-4
        ctx = Context(model, mode="predicted", threshold=tau)
        assert rel_err(ctx.decode(TOKENS), ref) < TOL["f32"]


def test_predictor_input_ffn_input(tmp_path):
    cfg, held, path = make(tmp_path, "bamboo_drelu_pred", predictor_input="ffn_input")
    trace = RefTrace()
    ref = forward(cfg, held, TOKENS, mode="predicted", trace=trace)
    assert trace.min_margin > 1e-4
    assert rel_err(Context(Model(path), mode="predicted").decode(TOKENS), ref) < TOL["f32"]


def test_moe_routing_matches(tmp_path):
    """Both MoE paths (mul_mat_id for dense, per-expert for sparse modes) route as Mixtral
    does; the reference's top-k has no near-ties, so a routing difference would show in the
    logits far above the tolerance."""
    cfg, held, path = make(tmp_path, "turbosparsemixtral", neuron_major=False)
    trace = RefTrace()
    ref = forward(cfg, held, TOKENS, trace=trace)
    chosen = np.concatenate(trace.routes)
    assert len(np.unique(chosen)) == cfg.n_expert  # every expert is used somewhere
    model = Model(path)
    for mode in ("dense", "exact"):
        assert rel_err(Context(model, mode=mode).decode(TOKENS), ref) < TOL["f32"], mode


@pytest.mark.parametrize("arch", [a[0] for a in ARCHS])
def test_batch_prefill_equals_token_by_token(tmp_path, arch):
    """The KV cache: one batch, then pieces, then single tokens all give the same logits."""
    cfg, held, path = make(tmp_path, arch)
    model = Model(path)
    mode = modes_of(arch)[-1]
    whole = Context(model, mode=mode).decode(TOKENS)
    ctx = Context(model, mode=mode)
    parts = [ctx.decode(TOKENS[:5]), ctx.decode(TOKENS[5:8])] + [ctx.decode([t]) for t in TOKENS[8:]]
    assert ctx.n_past == len(TOKENS)
    assert rel_err(np.concatenate(parts), whole) < 1e-5
    last = Context(model, mode=mode).decode(TOKENS, logits_all=False)
    assert rel_err(last[0], whole[-1]) < 1e-6


def test_sliding_window(tmp_path):
    cfg, held, path = make(tmp_path, "dense_llama_swiglu", sliding_window=4)
    ref = forward(cfg, held, TOKENS)
    got = Context(Model(path)).decode(TOKENS)
    assert rel_err(got, ref) < TOL["f32"]
    cfg.sliding_window = 0
    assert rel_err(got, forward(cfg, held, TOKENS)) > 1e-3  # the window mattered


def test_head_dim_and_linear_rope_scaling(tmp_path):
    """llama.attention.key_length != n_embd / n_head, and linear RoPE scaling."""
    cfg, held, path = make(tmp_path, "relu_llama_reglu", head_dim_override=32, rope_linear_factor=2.0)
    model = Model(path)
    assert model.meta.head_dim == 32 and model.meta.rope_freq_scale == 0.5
    assert rel_err(Context(model, mode="dense").decode(TOKENS), forward(cfg, held, TOKENS)) < TOL["f32"]
    cfg.rope_linear_factor = 1.0
    assert rel_err(Context(model, mode="dense").decode(TOKENS), forward(cfg, held, TOKENS)) > 1e-3


def test_cdef_matches_header():
    """python/turbosparse/cdef/runtime.h is turbosparse.h's declarations, comments dropped."""
    import re

    import runtime_api

    root = Path(__file__).resolve().parents[2]
    header = (root / "ggml_sparse" / "include" / "turbosparse.h").read_text()
    body = header.split('extern "C" {\n#endif\n', 1)[1].rsplit("#ifdef __cplusplus", 1)[0]

    def norm(text: str) -> str:
        return re.sub(r"\s+", " ", re.sub(r"//[^\n]*", "", text)).strip()

    cdef = (runtime_api.CDEF_DIR / "runtime.h").read_text()
    assert norm(body) == norm(cdef)


def test_tied_output(tmp_path):
    cfg, held, path = make(tmp_path, "bamboo_drelu_pred", tied=True)
    model = Model(path)
    assert model.meta.tied_output == 1
    assert rel_err(Context(model, mode="dense").decode(TOKENS), forward(cfg, held, TOKENS)) < TOL["f32"]


def test_plain_llamacpp_dense_file(tmp_path):
    """A dense SwiGLU file as llama.cpp writes it (no turbosparse.* keys, ffn_down) loads,
    runs dense, and matches the reference."""
    cfg, held, path = make(tmp_path, "dense_llama_swiglu", plain_llamacpp=True)
    model = Model(path)
    assert model.meta.is_turbosparse == 0 and model.meta.ffn_kind == 0 and model.meta.has_predictor == 0
    ctx = Context(model)  # auto mode
    assert rel_err(ctx.decode(TOKENS), forward(cfg, held, TOKENS)) < TOL["f32"]
    with pytest.raises(RuntimeError_, match="predictor"):
        Context(model, mode="predicted")
    with pytest.raises(RuntimeError_, match="SwiGLU"):
        Context(model, mode="exact")


def greedy(ctx: Context, prompt: list[int], n: int) -> list[int]:
    logits = ctx.decode(prompt, logits_all=False)[0]
    out = []
    for _ in range(n):
        tok = int(np.argmax(logits))
        out.append(tok)
        logits = ctx.decode([tok], logits_all=False)[0]
    return out


@pytest.mark.parametrize("arch", ["bamboo_drelu_pred", "turbosparsemixtral"])
def test_greedy_same_with_1_and_2_threads(tmp_path, arch):
    _, _, path = make(tmp_path, arch, "q4_0")
    model = Model(path)
    for mode in modes_of(arch):
        a = greedy(Context(model, n_threads=1, mode=mode, kv_f32=False), TOKENS[:4], 24)
        b = greedy(Context(model, n_threads=2, mode=mode, kv_f32=False), TOKENS[:4], 24)
        assert a == b, mode
        assert len(set(a)) > 1


def test_stats(tmp_path):
    _, _, path = make(tmp_path, "bamboo_drelu_pred")
    ctx = Context(Model(path), mode="predicted")
    ctx.decode(TOKENS)
    ctx.decode([3])
    s = ctx.stats()
    assert s.n_prompt_tokens == len(TOKENS) and s.n_gen_tokens == 1
    assert s.prompt_ms > 0 and s.gen_ms > 0 and s.load_ms >= 0
    assert 0 < s.ffn_density <= 1
    ctx.reset()
    assert ctx.n_past == 0 and ctx.stats().n_prompt_tokens == 0


def test_density_counts_the_neurons_computed(tmp_path):
    """The share of FFN neurons computed is the reference's share of predicted (predicted
    mode) or truly active (exact mode) neurons."""
    cfg, held, path = make(tmp_path, "bamboo_drelu_pred")
    model = Model(path)
    trace = RefTrace()
    forward(cfg, held, TOKENS, mode="predicted", trace=trace)
    ctx = Context(model, mode="predicted")
    ctx.decode(TOKENS)
    assert ctx.stats().ffn_density == pytest.approx(np.mean(np.concatenate(trace.masks)), abs=1e-12)

    # exact: a neuron is computed when relu(g) * relu(u) != 0, i.e. g > 0 and u > 0. A g or u
    # within float32 rounding of 0 may fall either way (it depends on the summation order of
    # the kernels, attention included), so those neurons only widen the accepted range.
    sure, maybe = [], []
    x = held["model.embed_tokens.weight"][TOKENS].astype(np.float64)
    import numpy_reference as ref

    w = {k: v.astype(np.float64) for k, v in held.items()}
    for il in range(cfg.n_layer):
        p = f"model.layers.{il}"
        h = ref.rms_norm(x, w[f"{p}.input_layernorm.weight"], cfg.rms_eps)
        resid = x + ref.attention(cfg, w, f"{p}.self_attn", h, np.arange(len(TOKENS)))
        f_in = ref.rms_norm(resid, w[f"{p}.post_attention_layernorm.weight"], cfg.rms_eps)
        g, u = f_in @ w[f"{p}.mlp.gate_proj.weight"].T, f_in @ w[f"{p}.mlp.up_proj.weight"].T
        eps_g, eps_u = 1e-5 * np.abs(g).max(), 1e-5 * np.abs(u).max()
        sure.append((g > eps_g) & (u > eps_u))
        maybe.append((g > -eps_g) & (u > -eps_u))
        x = resid + ref.ffn(cfg, w, f"{p}.mlp", f_in, resid, "dense", 0.0, RefTrace())
    ctx = Context(model, mode="exact")
    ctx.decode(TOKENS)
    lo, hi = np.mean(np.concatenate(sure)), np.mean(np.concatenate(maybe))
    assert hi - lo < 1e-3  # the undecided neurons are few: the check stays tight
    assert lo - 1e-12 <= ctx.stats().ffn_density <= hi + 1e-12
    dense = Context(model, mode="dense")
    dense.decode(TOKENS)
    assert dense.stats().ffn_density == 1.0


def test_moe_density_counts_routed_tokens_only(tmp_path):
    """MoE: the share is of the routed experts' neurons. A token an expert does not serve has a
    zero input there, whose predictor logits (0) pass a negative threshold: it must compute and
    count nothing, so the density is the reference's share over routed tokens, at most 1."""
    cfg, held, path = make(tmp_path, "turbosparsemixtral")
    model = Model(path)
    for tau in (-0.5, -1e9):
        trace = RefTrace()
        ref = forward(cfg, held, TOKENS, mode="predicted", tau=tau, trace=trace)
        assert trace.min_margin > 1e-4
        ctx = Context(model, mode="predicted", threshold=tau)
        assert rel_err(ctx.decode(TOKENS), ref) < TOL["f32"], tau
        density = ctx.stats().ffn_density
        assert density == pytest.approx(np.mean(np.concatenate(trace.masks)), abs=1e-12), tau
        assert density <= 1.0
    assert density == 1.0  # every routed neuron computed, nothing for the others


def tensor_bytes(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    return {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}


@pytest.mark.parametrize("outtype", ["q4_0", "q8_0"])
@pytest.mark.parametrize("arch", ["dense_llama_swiglu", "bamboo_drelu_pred"])
def test_repacked_weights(tmp_path, arch, outtype):
    """Weights only read densely go into the layout of the kernel that reads them (ggml's repack
    buffer, or ours: the 16-row layout for Q8_0/Q4_0): same logits within the quantised
    tolerance as the mapped weights, in every mode (bit for bit where ours reads both), and
    sparse FFN weights keep the file's layout (the sparse ops read it), copied to huge pages
    when they fit in memory, else (TURBOSPARSE_FFN_MAPPED=1 here) left in the mapping."""
    cfg, held, path = make(tmp_path, arch, outtype)
    packed, plain = Model(path), Model(path, repack=False)
    in_ram = Model(path, use_mmap=False)  # the whole file in RAM: our layout made in place
    os.environ["TURBOSPARSE_FFN_MAPPED"] = "1"
    try:
        ffn_mapped = Model(path)
    finally:
        del os.environ["TURBOSPARSE_FFN_MAPPED"]
    assert plain.meta.n_repacked == 0 and plain.meta.n_bytes_repacked == 0
    if outtype == "q4_0":  # ggml's AVX2 repack has Q4_0 layouts for these shapes
        assert packed.meta.n_repacked > 0 and packed.meta.n_bytes_repacked > 0
    per_layer = 7 if arch == "dense_llama_swiglu" else 6  # attention 4 + FFN 3, or + predictor 2
    assert ffn_mapped.meta.n_repacked <= cfg.n_layer * per_layer + 1
    if arch == "dense_llama_swiglu":  # a dense FFN is in `c` already: nothing sparse to copy
        assert packed.meta.n_repacked == ffn_mapped.meta.n_repacked
    else:  # gate, up and down of every layer, in the file's layout
        ffn_bytes = sum(n for name, n in tensor_bytes(path).items() if name.split(".")[-2] in
                        ("ffn_gate", "ffn_up", "ffn_down", "ffn_down_t"))
        assert packed.meta.n_repacked == ffn_mapped.meta.n_repacked + 3 * cfg.n_layer
        assert packed.meta.n_bytes_repacked - ffn_mapped.meta.n_bytes_repacked >= ffn_bytes
    # AVX-512: our matmul reads these weights in both models, in its 16-row layout in `packed`
    # and in the file's layout in `plain`; the layout never changes a bit
    ours_both = turbosparse.isa() == "avx512" and os.environ.get("TURBOSPARSE_MATMUL", "auto") == "auto"
    assert not ours_both or in_ram.meta.n_repacked > 0
    ref = forward(cfg, held, TOKENS)
    for mode in [m for m in modes_of(arch) if m != "predicted"]:
        a = Context(packed, mode=mode).decode(TOKENS)
        b = Context(plain, mode=mode).decode(TOKENS)
        assert rel_err(a, ref) < TOL[outtype] and rel_err(b, ref) < TOL[outtype], mode
        c = Context(in_ram, mode=mode).decode(TOKENS)
        assert rel_err(c, ref) < TOL[outtype], mode
        assert np.array_equal(a, Context(ffn_mapped, mode=mode).decode(TOKENS)), mode  # same layout, same bits
        assert not ours_both or (np.array_equal(a, b) and np.array_equal(a, c)), mode
        assert greedy(Context(packed, mode=mode, n_threads=1), TOKENS[:4], 6) == \
            greedy(Context(packed, mode=mode, n_threads=2), TOKENS[:4], 6)


@pytest.mark.parametrize("outtype", ["q4_0", "f32"])
def test_moe_experts_copied_in_file_layout(tmp_path, outtype):
    """MoE: the stacked experts and their predictors (read by the MoE ops in the file's layout)
    are copied to huge pages when they fit, and every mode gives the same bits as with them
    left in the mapping (TURBOSPARSE_FFN_MAPPED=1)."""
    cfg, held, path = make(tmp_path, "turbosparsemixtral", outtype)
    copied = Model(path)
    os.environ["TURBOSPARSE_FFN_MAPPED"] = "1"
    try:
        mapped = Model(path)
    finally:
        del os.environ["TURBOSPARSE_FFN_MAPPED"]
    expert_bytes = sum(n for name, n in tensor_bytes(path).items() if name.endswith("_exps.weight"))
    assert copied.meta.n_bytes_repacked - mapped.meta.n_bytes_repacked >= expert_bytes
    assert copied.meta.n_repacked == mapped.meta.n_repacked + 5 * cfg.n_layer  # gate, up, down, fc1, fc2
    for mode, tau in (("dense", None), ("exact", None), ("predicted", -0.5)):
        a = Context(copied, mode=mode, threshold=tau).decode(TOKENS)
        b = Context(mapped, mode=mode, threshold=tau).decode(TOKENS)
        assert np.array_equal(a, b), mode


def model_with_env(path: Path, **env: str) -> Model:
    """A Model loaded with these environment variables set (the loader reads them)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return Model(path)
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def test_sparse_ffn_stays_mapped_when_memory_is_short(tmp_path):
    """The sparse FFN is copied to huge pages only when the copy leaves an eighth of the
    available memory, at least 1 GiB: with a budget of 0 or 512 MiB (TURBOSPARSE_MEM_AVAILABLE)
    it stays in the mapping, as with TURBOSPARSE_FFN_MAPPED=1, and with 64 GiB it is copied;
    the logits are the same bits every way."""
    cfg, _, path = make(tmp_path, "bamboo_drelu_pred", "q4_0")
    mapped = model_with_env(path, TURBOSPARSE_FFN_MAPPED="1")
    roomy = model_with_env(path, TURBOSPARSE_MEM_AVAILABLE=str(64 << 30))
    assert roomy.meta.n_repacked == mapped.meta.n_repacked + 3 * cfg.n_layer  # gate, up, down
    ref = Context(roomy, mode="exact").decode(TOKENS)
    for budget in ("0", str(512 << 20)):
        short = model_with_env(path, TURBOSPARSE_MEM_AVAILABLE=budget)
        assert short.meta.n_repacked == mapped.meta.n_repacked, budget
        assert short.meta.n_bytes_repacked == mapped.meta.n_bytes_repacked, budget
        assert np.array_equal(Context(short, mode="exact").decode(TOKENS), ref), budget


def test_bad_memory_budget_is_reported_and_ignored(tmp_path, capfd):
    """A TURBOSPARSE_MEM_AVAILABLE that is not a number of bytes is named on stderr and
    ignored (the system's figure is used), not read as a budget of 0."""
    _, _, path = make(tmp_path, "bamboo_drelu_pred", "q4_0")
    default = Model(path)
    capfd.readouterr()
    bad = model_with_env(path, TURBOSPARSE_MEM_AVAILABLE="12GB")
    assert "TURBOSPARSE_MEM_AVAILABLE=12GB is not a number of bytes" in capfd.readouterr().err
    assert bad.meta.n_repacked == default.meta.n_repacked
    assert bad.meta.n_bytes_repacked == default.meta.n_bytes_repacked


def test_abort(tmp_path):
    """An abort request stops the next (or running) decode, leaves the cache as it was, and is
    consumed: the decode after it runs normally."""
    from runtime_api import lib

    _, _, path = make(tmp_path, "dense_llama_swiglu")
    model = Model(path)
    ctx = Context(model)
    ctx.decode(TOKENS[:4])
    lib.ts_context_abort(ctx.ptr)
    with pytest.raises(RuntimeError_, match="aborted"):
        ctx.decode(TOKENS[4:])
    assert ctx.n_past == 4
    rest = ctx.decode(TOKENS[4:])
    assert rel_err(rest, Context(model).decode(TOKENS)[4:]) < 1e-5


# ---- bad input ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(RuntimeError_, match="cannot open"):
        Model(tmp_path / "nope.gguf")


def test_wrong_magic(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"PWRI" + b"\0" * 64)
    with pytest.raises(RuntimeError_, match="bad magic 'PWRI'"):
        Model(p)


@pytest.mark.parametrize("keep", [16, 200, -100])
def test_truncated_file(tmp_path, keep):
    _, _, path = make(tmp_path, "bamboo_drelu_pred")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:keep] if keep > 0 else data[:keep])
    with pytest.raises(RuntimeError_, match="truncated|past the end"):
        Model(cut)


def test_unknown_architecture(tmp_path):
    _, _, path = make(tmp_path, "dense_llama_swiglu", arch="gpt2")
    with pytest.raises(RuntimeError_, match="unknown architecture 'gpt2'"):
        Model(path)


def test_missing_tensor(tmp_path):
    _, _, path = make(tmp_path, "bamboo_drelu_pred", skip=("blk.1.ffn_up.weight",))
    with pytest.raises(RuntimeError_, match="missing tensor 'blk.1.ffn_up.weight'"):
        Model(path)


def test_missing_predictor_tensor(tmp_path):
    _, _, path = make(tmp_path, "bamboo_drelu_pred", skip=("blk.0.ffn_pred_fc2.weight",))
    with pytest.raises(RuntimeError_, match="missing tensor 'blk.0.ffn_pred_fc2.weight'"):
        Model(path)


def test_wrong_shape(tmp_path):
    bad = np.zeros((64, 63), dtype=np.float32)  # HF [n_embd, n_embd - 1]
    _, _, path = make(tmp_path, "dense_llama_swiglu", replace={"blk.0.attn_output.weight": bad})
    with pytest.raises(RuntimeError_, match="tensor 'blk.0.attn_output.weight' has shape"):
        Model(path)


def test_norm_must_be_f32(tmp_path):
    _, _, path = make(tmp_path, "dense_llama_swiglu",
                      replace={"blk.0.attn_norm.weight": np.ones(64, np.float16)})
    with pytest.raises(RuntimeError_, match="attn_norm.weight' has type f16, expected f32"):
        Model(path)


def test_context_overflow(tmp_path):
    _, _, path = make(tmp_path, "dense_llama_swiglu")
    ctx = Context(Model(path), n_ctx=8)
    with pytest.raises(RuntimeError_, match="context full"):
        ctx.decode(TOKENS)  # 12 tokens > 8
    assert ctx.n_past == 0
    ctx.decode(TOKENS[:8])
    with pytest.raises(RuntimeError_, match="context full"):
        ctx.decode([3])


def test_bad_token(tmp_path):
    _, _, path = make(tmp_path, "dense_llama_swiglu")
    ctx = Context(Model(path))
    with pytest.raises(RuntimeError_, match="outside the vocabulary"):
        ctx.decode([1, 320])
    with pytest.raises(RuntimeError_, match="outside the vocabulary"):
        ctx.decode([-1])


def test_copy_loads_without_mmap(tmp_path):
    cfg, held, path = make(tmp_path, "bamboo_drelu_pred")
    copy = tmp_path / "copy.gguf"
    shutil.copy(path, copy)
    got = Context(Model(copy, use_mmap=False), mode="dense").decode(TOKENS)
    assert rel_err(got, forward(cfg, held, TOKENS)) < TOL["f32"]

"""ts-train-predictor on tiny dReLU checkpoints: the numpy forward it records with equals the
independent reference, the predictors it trains reach the requested recall on held-out
text, and the GGUF it writes loads and runs in the runtime's predicted mode."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_fixtures import _TEXT, read_tiny_tensors, write_tiny_checkpoint
from numpy_reference import RefConfig, forward
from runtime_api import Context, Model
from turbosparse.convert.transforms import permute_qk
from turbosparse.train.fit import FitConfig, evaluate, fit_layer, recall_cut, torch_available
from turbosparse.train.forward import LayerwiseForward
from turbosparse.train.output import Predictor, fold_thresholds
from turbosparse.train.record import Recording, record
from turbosparse.train.weights import GGUFModel, HFModel, open_model, unpermute_qk

RECALL = 0.95


def words_text(seed: int, n_words: int) -> str:
    rng = np.random.default_rng(seed)
    words = " ".join(_TEXT).split()
    return " ".join(rng.choice(words, n_words))


def ref_config(cfg: dict) -> RefConfig:
    moe = cfg["model_type"] == "turbosparsemixtral"
    return RefConfig(n_vocab=cfg["vocab_size"], n_embd=cfg["hidden_size"], n_layer=cfg["num_hidden_layers"],
                     n_ff=cfg["intermediate_size"], n_head=cfg["num_attention_heads"],
                     n_head_kv=cfg["num_key_value_heads"], rms_eps=cfg["rms_norm_eps"],
                     rope_theta=cfg["rope_theta"], sliding_window=cfg.get("sliding_window") or 0, ffn_kind="drelu",
                     n_expert=cfg.get("num_local_experts", 0), n_expert_used=cfg.get("num_experts_per_tok", 0),
                     predictor_input="ffn_input" if moe else "residual")


def run_cli(*args: object) -> subprocess.CompletedProcess:
    # one thread: these matrices are tiny, and BLAS threads on a busy machine only wait
    return subprocess.run([sys.executable, "-m", "turbosparse.train", *map(str, args), "--threads", "1"],
                          capture_output=True, text=True, timeout=300)


def convert(folder: Path, out: Path, *extra: str) -> Path:
    r = subprocess.run([sys.executable, "-m", "turbosparse.convert", str(folder), "--outfile", str(out), "--quiet",
                        *extra], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("tiny")
    cfg = write_tiny_checkpoint(d / "hf", arch="bamboo", n_layer=2, dtype="f32", with_predictor=False, seed=5)
    (d / "train.txt").write_text(words_text(1, 1500))
    (d / "heldout.txt").write_text(words_text(2, 400))
    gguf = convert(d / "hf", d / "base.gguf", "--outtype", "f32", "--no-predictor")
    return {"dir": d, "cfg": cfg, "hf": d / "hf", "gguf": gguf}


def test_unpermute_inverts_permute() -> None:
    w = np.random.default_rng(0).standard_normal((48, 7)).astype(np.float32)
    for n_head in (1, 2, 3, 6):
        np.testing.assert_array_equal(unpermute_qk(permute_qk(w, n_head), n_head), w)


@pytest.mark.parametrize("source", ["hf", "gguf"])
def test_forward_matches_reference(tiny, tmp_path, source) -> None:
    """The tool's float32 layer-major forward gives the reference's (float64) next-token NLL,
    from the HF folder and from the converted GGUF (un-permuted Q/K, transposed down)."""
    src = open_model(tiny[source])
    seqs = [np.array([1, 40, 7, 211, 99, 3, 150, 64, 12, 250]), np.array([1, 5, 9, 77, 13])]
    nll = LayerwiseForward(src, seqs, tmp_path).run("dense", want_nll=True)
    w = read_tiny_tensors(tiny["hf"])
    expected = []
    for q in seqs:
        logits = forward(ref_config(tiny["cfg"]), w, q.tolist())[:-1]
        z = logits - logits.max(axis=-1, keepdims=True)
        expected.append(np.log(np.exp(z).sum(-1)) - z[np.arange(len(q) - 1), q[1:]])
    np.testing.assert_allclose(nll, np.concatenate(expected), rtol=1e-4, atol=1e-4)


def test_record_streams_inputs_and_masks(tiny, tmp_path) -> None:
    src = HFModel(tiny["hf"])
    seqs = [np.array([1, 40, 7, 211, 99, 3]), np.array([1, 5, 9, 77])]
    rec = record(src, seqs, tmp_path / "rec")
    assert rec.n_tokens == 10 and rec.n_layer == 2
    # layer 0's predictor input is the residual after attention; its mask is a != 0 there
    from turbosparse.train.forward import attention, ffn_activation, rms_norm, rope_tables

    s, w0 = src.shape, src.layer(0)
    cos, sin = rope_tables(s, 6)
    x = src.embeddings()[seqs[0]]
    resid = x + attention(s, w0, rms_norm(x, w0.attn_norm, s.rms_eps), cos, sin)
    act = ffn_activation("drelu", rms_norm(resid, w0.ffn_norm, s.rms_eps), w0)
    np.testing.assert_allclose(rec.inputs(0)[:6], resid, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rec.masks(0, slice(0, 6)), act != 0)
    assert rec.packed_masks(1).shape == (10, (s.n_ff + 7) // 8)
    assert not (tmp_path / "rec" / "hidden_a.f32").exists()


def test_recall_cut_reaches_recall() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 100, 1001):
        p = rng.standard_normal(n)
        for r in (0.5, 0.9, 0.95, 1.0):
            tau = recall_cut(p, r)
            assert (p > tau).mean() >= r
            assert (p > tau).sum() <= int(np.ceil(r * n)) + 1  # not needlessly low


def synthetic_recording(tmp_path: Path, n: int = 6000, n_embd: int = 32, n_ff: int = 64) -> Recording:
    """Masks that a rank-8 predictor can express: active where two random projections of u are
    both positive (a dReLU-like AND), about a quarter of the neurons."""
    from numpy.lib.format import open_memmap

    rng = np.random.default_rng(1)
    u = rng.standard_normal((n, n_embd)).astype(np.float32) * 3.0
    a, b = rng.standard_normal((n_ff, n_embd)), rng.standard_normal((n_ff, n_embd))
    mask = ((u @ a.T) > 0) & ((u @ b.T) > 0)
    folder = tmp_path / "syn"
    folder.mkdir()
    open_memmap(folder / "u_0.npy", mode="w+", dtype=np.float32, shape=u.shape)[:] = u
    open_memmap(folder / "mask_0.npy", mode="w+", dtype=np.uint8, shape=(n, n_ff // 8))[:] = np.packbits(mask, axis=1)
    return Recording(folder, 1, n, n_embd, n_ff, np.array([0, n]), {(0, -1): n})


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_fit_learns_and_reaches_recall(tmp_path, backend) -> None:
    if backend == "torch" and not torch_available():
        pytest.skip("torch is not installed (optional backend)")
    rec = synthetic_recording(tmp_path)
    fit = fit_layer(rec, 0, FitConfig(rank=32, recall=RECALL, epochs=8, batch=128, lr=3e-3, backend=backend,
                                      threads=1))
    assert fit.backend == backend
    assert fit.fc1.shape == (32, 32) and fit.fc2.shape == (64, 32)
    assert fit.recall >= RECALL
    # a predictor that learned nothing would need a density near the recall to reach it
    assert fit.predicted_density < 0.6 * RECALL, fit
    assert abs(fit.true_density - 0.25) < 0.1
    # the reported figures are those of the weights returned
    n_val = int(round(rec.n_tokens * 0.1))
    got = evaluate(rec, 0, fit.fc1, fit.fc2, fit.tau, range(rec.n_tokens - n_val, rec.n_tokens))
    assert got == pytest.approx((fit.recall, fit.predicted_density, fit.true_density))


def test_fold_thresholds_keeps_or_lowers_every_cut() -> None:
    rng = np.random.default_rng(2)
    u = rng.standard_normal((200, 16)).astype(np.float32)
    for taus in ([-0.5, -2.0, -0.1], [0.3, 1.5, 0.2], [-0.4, 0.7, 0.1, -1e-4], [0.0, 0.5], [-3.0, 0.0]):
        preds = [Predictor(rng.standard_normal((8, 16)).astype(np.float32),
                           rng.standard_normal((24, 8)).astype(np.float32)) for _ in taus]
        out, common, cuts = fold_thresholds(preds, taus)
        for p, q, tau, cut in zip(preds, out, taus, cuts):
            assert cut <= tau  # never less recall than asked for
            if all(t < 0 for t in taus) or all(t > 0 for t in taus):
                assert cut == tau
            own = np.maximum(u @ p.fc1.T, 0) @ p.fc2.T
            written = np.maximum(u @ q.fc1.T, 0) @ q.fc2.T > common
            assert ((own > cut) != written).mean() < 1e-3  # the file's test is the layer's cut
        if any(t > 0 for t in taus) and any(t < 0 for t in taus):
            assert common < 0 and max(cuts) < 0


def heldout_recall(gguf: Path, text_path: Path, tmp_path: Path) -> tuple[float, float, float]:
    """Recall, predicted and true density of a GGUF's predictors on text never trained on,
    along the predicted-mode computation (the numpy forward)."""
    from turbosparse.train.corpus import token_sequences

    src = GGUFModel(gguf)
    seqs = token_sequences(src, [text_path], 128)
    counts = np.zeros(3)

    def observe(obs) -> None:
        counts[0] += (obs.active & obs.predicted).sum()
        counts[1] += obs.active.sum()
        counts[2] += obs.predicted.sum()

    fwd = LayerwiseForward(src, seqs, tmp_path)
    fwd.run("predicted", observe=observe)
    total = fwd.n_tokens * src.shape.n_layer * src.shape.n_ff
    return counts[0] / counts[1], counts[2] / total, counts[1] / total


def test_cli_gguf_in_gguf_out_runs_predicted(tiny, tmp_path) -> None:
    out, report = tmp_path / "pred.gguf", tmp_path / "report.json"
    r = run_cli(tiny["gguf"], "--corpus", tiny["dir"] / "train.txt", "--outfile", out, "--rank", "32,48",
                "--recall", RECALL, "-c", "128", "--epochs", "6", "--backend", "numpy", "--report", report)
    assert r.returncode == 0, r.stderr
    assert "pred_density" in r.stdout and "true_density" in r.stdout
    rep = json.loads(report.read_text())
    assert [layer["rank"] for layer in rep["layers"]] == [32, 48]
    for layer in rep["layers"]:
        assert layer["recall"] >= RECALL and layer["predicted_density"] < 0.9
        assert layer["cut"] <= layer["own_cut"]

    # the new file: the source's tensors byte for byte, plus predictors and their keys
    base, new = GGUFModel(tiny["gguf"]), GGUFModel(out)
    assert new.has_predictor and not base.has_predictor
    assert new.threshold == pytest.approx(rep["threshold"])
    for name, t in base.tensors.items():
        np.testing.assert_array_equal(new.tensors[name].data, t.data, err_msg=name)
    assert new.layer(1).fc1.shape == (48, tiny["cfg"]["hidden_size"])

    # on text it never saw, recall stays near the target (held-out choice of the cut)
    recall, pred_density, true_density = heldout_recall(out, tiny["dir"] / "heldout.txt", tmp_path)
    assert recall >= RECALL - 0.05, recall
    assert true_density <= pred_density < 0.9

    # the runtime loads it and its predicted mode computes what the predictors select
    model = Model(out)
    assert model.meta.has_predictor == 1
    assert model.meta.threshold == pytest.approx(rep["threshold"])
    ctx = Context(model, n_ctx=64, mode="predicted")
    tokens = [1, 40, 7, 211, 99, 3, 150, 64, 12, 250]
    logits = ctx.decode(tokens)
    assert np.isfinite(logits).all()
    assert 0 < ctx.stats().ffn_density < 1
    w = read_tiny_tensors(tiny["hf"])
    for i in range(2):
        layer = new.layer(i)
        w[f"model.layers.{i}.mlp.predictor.fc1.weight"] = layer.fc1
        w[f"model.layers.{i}.mlp.predictor.fc2.weight"] = layer.fc2
    ref = forward(ref_config(tiny["cfg"]), w, tokens, mode="predicted", tau=new.threshold)
    np.testing.assert_allclose(logits, ref, rtol=0, atol=2e-3 * np.abs(ref).max())


def test_cli_hf_in_writes_predictor_folder_and_gguf(tiny, tmp_path) -> None:
    pdir, out = tmp_path / "preds", tmp_path / "model-q8_0.gguf"
    r = run_cli(tiny["hf"], "--corpus", tiny["dir"] / "train.txt", "--out-predictors", pdir, "--outfile", out,
                "--outtype", "q8_0", "--rank", "32", "-c", "128", "--epochs", "4", "--max-tokens", "6000",
                "--quiet")
    assert r.returncode == 0, r.stderr
    threshold = json.loads((pdir / "config.json").read_text())["sparse_threshold"]
    assert sorted(p.name for p in pdir.glob("model_*.safetensors")) == ["model_0.safetensors", "model_1.safetensors"]
    # convert-turbosparse --predictors reads the folder back into the same model
    again = convert(tiny["hf"], tmp_path / "again.gguf", "--outtype", "q8_0", "--predictors", str(pdir))
    a, b = GGUFModel(out), GGUFModel(again)
    assert a.threshold == pytest.approx(threshold) == pytest.approx(b.threshold)
    for name, t in a.tensors.items():
        np.testing.assert_array_equal(b.tensors[name].data, t.data, err_msg=name)
    ctx = Context(Model(out), n_ctx=32, mode="predicted")
    assert np.isfinite(ctx.decode([1, 40, 7, 211])).all()


def test_outtype_names_are_the_converters() -> None:
    from turbosparse.convert.qtypes import OUTTYPES
    from turbosparse.train.cli import OUTTYPE_NAMES

    assert OUTTYPE_NAMES == tuple(OUTTYPES)


def test_cli_errors(tiny, tmp_path) -> None:
    corpus = tiny["dir"] / "train.txt"
    r = run_cli(tiny["gguf"], "--corpus", corpus)
    assert r.returncode == 1 and "--outfile" in r.stderr
    r = run_cli(tiny["gguf"], "--corpus", tmp_path / "nope.txt", "--outfile", tmp_path / "x.gguf")
    assert r.returncode == 1 and "nope.txt" in r.stderr
    r = run_cli(tiny["gguf"], "--corpus", corpus, "--outfile", tiny["gguf"])
    assert r.returncode == 1 and "exists" in r.stderr
    r = run_cli(tiny["gguf"], "--corpus", corpus, "--outfile", tmp_path / "x.gguf", "--rank", "8,8,8")
    assert r.returncode == 1 and "3 ranks" in r.stderr
    swiglu = tmp_path / "llama"
    write_tiny_checkpoint(swiglu, arch="llama", dtype="f32")
    r = run_cli(swiglu, "--corpus", corpus, "--outfile", tmp_path / "x.gguf")
    assert r.returncode == 1 and "ReGLU/dReLU" in r.stderr
    assert not (tmp_path / "x.gguf").exists()


# ---------------------------------------------------------------------------------------
# MoE (TurboSparse-Mixtral layout): one predictor per expert, trained on the tokens routed to it

@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("moe")
    cfg = write_tiny_checkpoint(d / "hf", arch="turbosparsemixtral", n_layer=2, dtype="f32", with_predictor=False,
                                seed=6)
    (d / "train.txt").write_text(words_text(3, 1500))
    gguf = convert(d / "hf", d / "base.gguf", "--outtype", "f32", "--no-predictor")
    return {"dir": d, "cfg": cfg, "hf": d / "hf", "gguf": gguf}


@pytest.mark.parametrize("source", ["hf", "gguf"])
def test_moe_forward_matches_reference(tiny_moe, tmp_path, source) -> None:
    src = open_model(tiny_moe[source])
    assert src.shape.n_expert == 4 and src.shape.predictor_input == "ffn_input"
    seq = np.array([1, 40, 7, 211, 99, 3, 150, 64, 12, 250])
    nll = LayerwiseForward(src, [seq], tmp_path).run("dense", want_nll=True)
    logits = forward(ref_config(tiny_moe["cfg"]), read_tiny_tensors(tiny_moe["hf"]), seq.tolist())[:-1]
    z = logits - logits.max(axis=-1, keepdims=True)
    expected = np.log(np.exp(z).sum(-1)) - z[np.arange(len(seq) - 1), seq[1:]]
    np.testing.assert_allclose(nll, expected, rtol=1e-4, atol=1e-4)


def test_moe_cli_per_expert_predictors_run_in_the_runtime(tiny_moe, tmp_path) -> None:
    out, report = tmp_path / "moe-pred.gguf", tmp_path / "report.json"
    r = run_cli(tiny_moe["gguf"], "--corpus", tiny_moe["dir"] / "train.txt", "--outfile", out, "--rank", "32",
                "-c", "128", "--epochs", "6", "--backend", "numpy", "--report", report)
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    assert sorted((x["layer"], x["expert"]) for x in rep["layers"]) == [(i, e) for i in range(2) for e in range(4)]
    for x in rep["layers"]:
        assert x["recall"] >= RECALL and x["predicted_density"] < 0.9
    new = GGUFModel(out)
    assert new.has_predictor and new.tensors["blk.0.ffn_pred_fc1_exps.weight"].shape.tolist() == [64, 32, 4]

    model = Model(out)
    assert model.meta.has_predictor == 1
    ctx = Context(model, n_ctx=64, mode="predicted")
    tokens = [1, 40, 7, 211, 99, 3, 150, 64, 12, 250]
    logits = ctx.decode(tokens)
    assert ctx.stats().ffn_neurons_computed > 0
    w = read_tiny_tensors(tiny_moe["hf"])
    for i in range(2):
        layer = new.layer(i)
        for e in range(4):
            w[f"model.layers.{i}.block_sparse_moe.experts.{e}.predictor.fc1.weight"] = layer.fc1[e]
            w[f"model.layers.{i}.block_sparse_moe.experts.{e}.predictor.fc2.weight"] = layer.fc2[e]
    ref = forward(ref_config(tiny_moe["cfg"]), w, tokens, mode="predicted", tau=new.threshold)
    np.testing.assert_allclose(logits, ref, rtol=0, atol=2e-3 * np.abs(ref).max())


def test_moe_cli_from_hf(tiny_moe, tmp_path) -> None:
    out = tmp_path / "moe-q8_0.gguf"
    r = run_cli(tiny_moe["hf"], "--corpus", tiny_moe["dir"] / "train.txt", "--outfile", out, "--outtype", "q8_0",
                "--rank", "32", "-c", "128", "--epochs", "3", "--max-tokens", "6000", "--quiet")
    assert r.returncode == 0, r.stderr
    new = GGUFModel(out)
    assert new.has_predictor and new.layer(1).fc2.shape == (4, tiny_moe["cfg"]["intermediate_size"], 32)
    assert np.isfinite(Context(Model(out), n_ctx=32, mode="predicted").decode([1, 40, 7, 211])).all()
    r = run_cli(tiny_moe["hf"], "--corpus", tiny_moe["dir"] / "train.txt", "--out-predictors", tmp_path / "p")
    assert r.returncode == 1 and "experts" in r.stderr


def test_windows_spread_over_the_corpus_and_held_out_windows_too(tiny, tmp_path) -> None:
    from turbosparse.train.corpus import hold_out_last, token_sequences

    src = HFModel(tiny["hf"])
    everything = token_sequences(src, [tiny["dir"] / "train.txt"], 64)
    some = token_sequences(src, [tiny["dir"] / "train.txt"], 64, max_tokens=640)
    assert sum(map(len, some)) <= 640 and len(some) >= 9
    firsts = [next(i for i, q in enumerate(everything) if np.array_equal(q[:len(s)], s)) for s in some]
    assert firsts == sorted(firsts) and firsts[-1] >= len(everything) - 2  # from start to end
    assert all(q[0] == src.bos_id for q in some)
    moved = hold_out_last(everything, 0.1)
    assert sorted(map(bytes, moved)) == sorted(map(bytes, everything))
    assert [bytes(q) for q in moved[-(len(everything) // 10):]] == [bytes(q) for q in everything[9::10]]

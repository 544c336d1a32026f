"""--from-powerinfer: a PowerInfer GGUF (magic PWRI) imports into our format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from convert_expect import field, tensor_bytes
from hf_fixtures import write_powerinfer_gguf
from turbosparse.convert.cli import main
from turbosparse.convert.powerinfer import _PowerInferReader


def convert(*args: str | Path) -> int:
    return main([str(a) for a in args] + ["--quiet"])


def renamed(name: str) -> str:
    for k in ("1", "2"):
        if f".fc{k}" in name:
            return name.split(".fc")[0] + f".ffn_pred_fc{k}.weight"
    return name


def source_bytes(path: Path) -> dict[str, tuple[np.ndarray, int]]:
    reader = _PowerInferReader(path)
    return {t.name: (np.asarray(t.data).view(np.uint8).reshape(-1).copy(), int(t.tensor_type)) for t in reader.tensors}


@pytest.mark.parametrize("weight_type,fc_suffix", [("f16", True), ("q4_0", False), ("f32", True)])
def test_import_keeps_types_bit_exact(tmp_path: Path, weight_type: str, fc_suffix: bool) -> None:
    src = tmp_path / "pi.gguf"
    info = write_powerinfer_gguf(src, weight_type=weight_type, fc_suffix=fc_suffix)
    assert src.read_bytes()[:4] == b"PWRI"
    out = tmp_path / "out.gguf"
    assert convert("--from-powerinfer", src, "--outfile", out) == 0
    assert out.read_bytes()[:4] == b"GGUF"
    r = GGUFReader(out)
    original = source_bytes(src)
    assert sorted(t.name for t in r.tensors) == sorted(renamed(n) for n in original)
    for name, (raw, qtype) in original.items():
        got, got_type, _ = tensor_bytes(r, renamed(name))
        assert int(got_type) == qtype, name
        np.testing.assert_array_equal(got, raw, err_msg=name)

    assert field(r, "general.architecture") == "llama"
    assert field(r, "general.name") == "tiny-powerinfer"
    assert field(r, "llama.embedding_length") == 64
    assert field(r, "llama.feed_forward_length") == 96
    assert field(r, "llama.block_count") == 2
    assert field(r, "llama.attention.head_count_kv") == 2
    assert r.get_field("bamboo.embedding_length") is None
    assert field(r, "turbosparse.source_model_type") == "powerinfer"
    assert field(r, "turbosparse.ffn_kind") == "drelu"
    assert field(r, "turbosparse.down_layout") == "neuron_major"
    assert field(r, "turbosparse.predictor.present") is True
    assert field(r, "turbosparse.predictor.input") == "residual"
    assert field(r, "turbosparse.predictor.threshold") == 0.5
    assert r.get_field("powerinfer.sparse_threshold") is None
    assert field(r, "tokenizer.ggml.eot_token_id") == info["im_end"]
    src_reader = _PowerInferReader(src)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.model"):
        assert field(r, key) == src_reader.get_field(key).contents(), key


def test_import_with_outtype_requantizes(tmp_path: Path) -> None:
    src = tmp_path / "pi.gguf"
    info = write_powerinfer_gguf(src, weight_type="q4_0")
    out = tmp_path / "out.gguf"
    assert convert("--from-powerinfer", src, "--outfile", out, "--outtype", "f32") == 0
    r = GGUFReader(out)
    assert field(r, "general.file_type") == 0
    for name, (values, _) in info["tensors"].items():
        raw, qtype, shape = tensor_bytes(r, renamed(name))
        assert qtype.name == "F32" and shape == values.shape
        np.testing.assert_array_equal(raw.view(np.float32).reshape(shape), values, err_msg=name)


def test_import_swiglu_override_transposes_down(tmp_path: Path) -> None:
    src = tmp_path / "pi.gguf"
    info = write_powerinfer_gguf(src, weight_type="f32")
    out = tmp_path / "out.gguf"
    assert convert("--from-powerinfer", src, "--outfile", out, "--ffn-kind", "swiglu") == 0
    r = GGUFReader(out)
    names = [t.name for t in r.tensors]
    assert not [n for n in names if "pred" in n or "down_t" in n]
    assert field(r, "turbosparse.down_layout") == "standard"
    assert field(r, "turbosparse.predictor.present") is False
    raw, _, shape = tensor_bytes(r, "blk.1.ffn_down.weight")
    np.testing.assert_array_equal(raw.view(np.float32).reshape(shape), info["tensors"]["blk.1.ffn_down_t.weight"][0].T)


def test_import_no_predictor(tmp_path: Path) -> None:
    src = tmp_path / "pi.gguf"
    write_powerinfer_gguf(src)
    out = tmp_path / "out.gguf"
    assert convert("--from-powerinfer", src, "--outfile", out, "--no-predictor", "--threshold", "1.0") == 0
    r = GGUFReader(out)
    assert not [t.name for t in r.tensors if "pred" in t.name]
    assert field(r, "turbosparse.predictor.present") is False
    assert field(r, "turbosparse.predictor.threshold") == 1.0


def test_plain_gguf_is_not_powerinfer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "pi.gguf"
    write_powerinfer_gguf(src)
    with open(src, "r+b") as f:
        f.write(b"GGUF")
    out = tmp_path / "out.gguf"
    assert convert("--from-powerinfer", src, "--outfile", out) == 1
    err = capsys.readouterr().err
    assert "not a PowerInfer GGUF" in err and "plain GGUF" in err
    assert convert("--from-powerinfer", tmp_path / "nope.gguf", "--outfile", out) == 1
    assert "no such file" in capsys.readouterr().err
    assert not out.exists()


def test_source_file_is_not_modified(tmp_path: Path) -> None:
    src = tmp_path / "pi.gguf"
    write_powerinfer_gguf(src)
    before = src.read_bytes()
    assert convert("--from-powerinfer", src, "--outfile", tmp_path / "out.gguf") == 0
    assert src.read_bytes() == before


def test_import_keeps_a_q6_k_head_and_runs_it(tmp_path: Path) -> None:
    """PowerInfer's (and llama.cpp's) quantize writes a Q6_K output.weight beside Q4_0 weights: it
    is imported without --outtype, byte for byte, and the runtime computes with it."""
    import turbosparse

    src = tmp_path / "pi.gguf"
    info = write_powerinfer_gguf(src, n_embd=256, n_head=4, n_head_kv=2, weight_type="f16", head_type="q6_k")
    out, ref = tmp_path / "out.gguf", tmp_path / "f32.gguf"
    assert convert("--from-powerinfer", src, "--outfile", out) == 0
    raw, qtype, _ = tensor_bytes(GGUFReader(out), "output.weight")
    assert qtype.name == "Q6_K"
    np.testing.assert_array_equal(raw, source_bytes(src)["output.weight"][0])
    assert convert("--from-powerinfer", src, "--outfile", ref, "--outtype", "f32") == 0  # the same values in f32
    ids = [1, 5, 9, 3, 7]
    with turbosparse.Model(out, ffn_mode="dense", n_threads=1) as m:
        got = m.eval(ids)
    with turbosparse.Model(ref, ffn_mode="dense", n_threads=1) as m:
        want = m.eval(ids)
    assert np.all(np.isfinite(got)) and got.shape == (len(ids), info["vocab_size"])
    # the Q6_K head multiplies Q8_K-quantised activations: close to the f32 head, not equal
    assert np.max(np.abs(got - want)) < 0.02 * np.max(np.abs(want)) + 1e-3
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.8

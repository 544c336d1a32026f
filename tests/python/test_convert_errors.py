"""Bad input gives a clear error naming the file or tensor, exit status 1, and no output file."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hf_fixtures import predictor_dir, read_safetensors, write_safetensors, write_tiny_checkpoint
from turbosparse.convert.cli import main


def fails(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """Run the converter, expect exit 1, return its error message."""
    code = main([str(a) for a in args] + ["--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("convert-turbosparse: error: "), err
    assert "Traceback" not in err
    return err


def assert_no_output(out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, leftovers


@pytest.fixture
def bamboo(tmp_path: Path) -> Path:
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="bamboo", dtype="f32")
    return src


def edit_tensor(src: Path, name: str, value: np.ndarray, dtype: str = "f32") -> None:
    tensors = read_safetensors(src / "model.safetensors")
    tensors[name] = value
    write_safetensors(src / "model.safetensors", tensors, dtype)


def test_missing_config(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bamboo / "config.json").unlink()
    out = tmp_path / "o.gguf"
    err = fails(capsys, bamboo, "--outfile", out)
    assert "config missing" in err and str(bamboo / "config.json") in err
    assert_no_output(out)


def test_missing_tokenizer(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bamboo / "tokenizer.model").unlink()
    out = tmp_path / "o.gguf"
    err = fails(capsys, bamboo, "--outfile", out)
    assert "tokenizer missing" in err and str(bamboo / "tokenizer.model") in err
    assert_no_output(out)


def test_missing_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="llama", sharded=True)
    (src / "model-00002-of-00003.safetensors").unlink()
    out = tmp_path / "o.gguf"
    err = fails(capsys, src, "--outfile", out)
    assert "model-00002-of-00003.safetensors" in err and "missing" in err
    assert_no_output(out)


def test_no_weights(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bamboo / "model.safetensors").unlink()
    err = fails(capsys, bamboo, "--outfile", tmp_path / "o.gguf")
    assert "no model.safetensors" in err


def test_unknown_model_type(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = json.loads((bamboo / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (bamboo / "config.json").write_text(json.dumps(config))
    err = fails(capsys, bamboo, "--outfile", tmp_path / "o.gguf")
    assert "unknown model_type 'gpt_neox'" in err and "bamboo" in err


def test_unsupported_activation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="llama")
    config = json.loads((src / "config.json").read_text())
    config["hidden_act"] = "fatrelu"
    (src / "config.json").write_text(json.dumps(config))
    assert "hidden_act 'fatrelu'" in fails(capsys, src, "--outfile", tmp_path / "o.gguf")


def test_missing_config_key(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = json.loads((bamboo / "config.json").read_text())
    del config["intermediate_size"]
    (bamboo / "config.json").write_text(json.dumps(config))
    assert "'intermediate_size'" in fails(capsys, bamboo, "--outfile", tmp_path / "o.gguf")


def test_shape_mismatch(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_tensor(bamboo, "model.layers.1.mlp.up_proj.weight", np.zeros((95, 64), np.float32))
    out = tmp_path / "o.gguf"
    err = fails(capsys, bamboo, "--outfile", out)
    assert "model.layers.1.mlp.up_proj.weight" in err and "[95, 64]" in err and "[96, 64]" in err
    assert str(bamboo / "model.safetensors") in err
    assert_no_output(out)


def test_predictor_shape_mismatch(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_tensor(bamboo, "model.layers.0.mlp.predictor.fc2.weight", np.zeros((96, 31), np.float32))
    err = fails(capsys, bamboo, "--outfile", tmp_path / "o.gguf")
    assert "model.layers.0.mlp.predictor.fc2.weight" in err and "[96, 32]" in err


def test_missing_tensor(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tensors = read_safetensors(bamboo / "model.safetensors")
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    write_safetensors(bamboo / "model.safetensors", tensors)
    err = fails(capsys, bamboo, "--outfile", tmp_path / "o.gguf")
    assert "'model.layers.1.self_attn.v_proj.weight' is missing" in err


def test_unexpected_tensor(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_tensor(bamboo, "model.layers.0.self_attn.q_proj.bias", np.zeros(64, np.float32))
    err = fails(capsys, bamboo, "--outfile", tmp_path / "o.gguf")
    assert "model.layers.0.self_attn.q_proj.bias" in err and "not part of a bamboo model" in err


@pytest.mark.parametrize("bad,what", [(np.nan, "1 NaN and 0 Inf"), (np.inf, "0 NaN and 1 Inf")])
def test_nan_or_inf(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str], bad: float, what: str) -> None:
    tensors = read_safetensors(bamboo / "model.safetensors")
    w = tensors["model.layers.1.mlp.down_proj.weight"].copy()
    w[3, 5] = bad
    edit_tensor(bamboo, "model.layers.1.mlp.down_proj.weight", w)
    out = tmp_path / "o.gguf"
    err = fails(capsys, bamboo, "--outfile", out)
    assert "blk.1.ffn_down_t.weight" in err and what in err
    assert_no_output(out)


def test_unsupported_dtype(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # rewrite one tensor as I64 in the safetensors header
    path = bamboo / "model.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    entry = header["model.norm.weight"]
    b, _ = entry["data_offsets"]
    entry["dtype"] = "I64"
    entry["shape"] = [32]  # 64 f32 = 32 int64: the byte count still matches
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    err = fails(capsys, bamboo, "--outfile", tmp_path / "o.gguf")
    assert "model.norm.weight" in err and "dtype I64" in err


def test_truncated_safetensors(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = bamboo / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    err = fails(capsys, bamboo, "--outfile", tmp_path / "o.gguf")
    assert "past the end of the file" in err and str(path) in err


def test_missing_inside_predictors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="bamboo", with_predictor=False)
    err = fails(capsys, src, "--outfile", tmp_path / "o.gguf")
    assert "no predictors" in err and "--no-predictor" in err


def test_moe_missing_predictors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="turbosparsemixtral", with_predictor=False)
    err = fails(capsys, src, "--outfile", tmp_path / "o.gguf")
    assert "experts.0.predictor.fc1.weight" in err and "--no-predictor" in err


def test_relu_llama_needs_predictors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="relu-llama")
    err = fails(capsys, src, "--outfile", tmp_path / "o.gguf")
    assert "--predictors DIR" in err and "--no-predictor" in err


def test_missing_predictor_layer_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="relu-llama")
    (predictor_dir(src) / "model_1.safetensors").unlink()
    err = fails(capsys, src, "--outfile", tmp_path / "o.gguf", "--predictors", predictor_dir(src))
    assert "layer 1" in err and "model_1.pt" in err


def test_predictors_for_swiglu_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="llama")
    err = fails(capsys, src, "--outfile", tmp_path / "o.gguf", "--predictors", tmp_path)
    assert "SwiGLU" in err


def test_hostile_pickle_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="relu-llama")
    pdir = predictor_dir(src)
    (pdir / "model_0.safetensors").unlink()

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    with zipfile.ZipFile(pdir / "model_0.pt", "w") as z:
        z.writestr("model_0/data.pkl", pickle.dumps({"fc1.weight": Boom()}, protocol=2))
    err = fails(capsys, src, "--outfile", tmp_path / "o.gguf", "--predictors", pdir)
    assert "refusing to load" in err and "print" in err and "model_0.pt" in err


def test_output_exists_without_force(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    err = fails(capsys, bamboo, "--outfile", out)
    assert "--force" in err and str(out) in err
    assert out.read_bytes() == b"precious"


def test_failure_midway_keeps_old_output(tmp_path: Path, bamboo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    tensors = read_safetensors(bamboo / "model.safetensors")
    w = tensors["model.norm.weight"].copy()
    w[0] = np.nan
    edit_tensor(bamboo, "model.norm.weight", w)
    fails(capsys, bamboo, "--outfile", out, "--force")
    assert out.read_bytes() == b"precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.gguf.")]


def test_interrupt_leaves_nothing(tmp_path: Path, bamboo: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    import turbosparse.convert.writer as writer

    real = writer.encode
    calls = []

    def interrupted(data, qtype, where):  # type: ignore[no-untyped-def]
        calls.append(where)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(data, qtype, where)

    monkeypatch.setattr(writer, "encode", interrupted)
    out = tmp_path / "o.gguf"
    assert main([str(bamboo), "--outfile", str(out), "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(calls) == 5
    assert_no_output(out)


def test_bad_arguments(tmp_path: Path, bamboo: Path) -> None:
    for args in ([], [str(bamboo), "--hf-repo", "x/y"], [str(bamboo), "--ffn-kind", "drelu"],
                 [str(bamboo), "--predictors", str(tmp_path), "--no-predictor"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2


def test_hf_repo_without_huggingface_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    err = fails(capsys, "--hf-repo", "someone/model", "--outfile", tmp_path / "o.gguf")
    assert "huggingface-hub" in err


def test_hf_repo_offline_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    import types

    def snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        raise FileNotFoundError("offline and not in the cache")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    err = fails(capsys, "--hf-repo", "someone/model", "--outfile", tmp_path / "o.gguf")
    assert "someone/model" in err and "not in the cache" in err

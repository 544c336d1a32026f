"""convert-turbosparse: every checkpoint layout converts, and reads back equal to its source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from gguf import GGUFReader, TokenType

from convert_expect import (encoded_expected, expected_tensors, expected_type, field, permute_reference,
                            tensor_bytes)
from hf_fixtures import (CHATML_TEMPLATE, predictor_dir, tiny_sentencepiece_model, tiny_sentencepiece_size,
                         write_tiny_checkpoint)
from turbosparse.convert.cli import main
from turbosparse.convert.transforms import permute_qk


def convert(*args: str | Path) -> int:
    return main([str(a) for a in args] + ["--quiet"])


def check_tensors(out: Path, expected: dict[str, np.ndarray], outtype: str, predictor_type: str | None = None) -> None:
    reader = GGUFReader(out)
    names = [t.name for t in reader.tensors]
    assert sorted(names) == sorted(expected), set(names) ^ set(expected)
    for name, values in expected.items():
        raw, qtype, shape = tensor_bytes(reader, name)
        assert shape == values.shape, name
        assert qtype == expected_type(name, shape, outtype, predictor_type), name
        np.testing.assert_array_equal(raw, encoded_expected(values, qtype), err_msg=name)


LAYOUTS = [
    # arch, dtype, sharded, outtype
    ("bamboo", "bf16", True, "f16"),
    ("bamboo", "f32", False, "f32"),
    ("bamboo", "f16", False, "q8_0"),
    ("bamboo", "bf16", False, "q4_0"),
    ("turbosparsemixtral", "bf16", True, "f16"),
    ("turbosparsemixtral", "f32", False, "q8_0"),
    ("relu-llama", "bf16", False, "f16"),
    ("llama", "bf16", True, "bf16"),
    ("mistral", "f16", False, "q4_0"),
    ("mixtral", "bf16", False, "f32"),
]


@pytest.mark.parametrize("arch,dtype,sharded,outtype", LAYOUTS)
def test_checkpoint_round_trip(tmp_path: Path, arch: str, dtype: str, sharded: bool, outtype: str) -> None:
    src = tmp_path / "model"
    config = write_tiny_checkpoint(src, arch=arch, n_layer=2, dtype=dtype, sharded=sharded)
    out = tmp_path / "out.gguf"
    extra = ["--predictors", predictor_dir(src)] if arch == "relu-llama" else []
    assert convert(src, "--outfile", out, "--outtype", outtype, *extra) == 0
    sparse = config["hidden_act"] == "relu"
    expected = expected_tensors(src, config, with_predictor=sparse, predictors_from_dir=arch == "relu-llama")
    check_tensors(out, expected, outtype)

    r = GGUFReader(out)
    assert field(r, "general.architecture") == "llama"
    assert field(r, "general.file_type") == {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2}[outtype]
    assert field(r, "llama.embedding_length") == config["hidden_size"]
    assert field(r, "llama.feed_forward_length") == config["intermediate_size"]
    assert field(r, "llama.block_count") == config["num_hidden_layers"]
    assert field(r, "llama.attention.head_count") == config["num_attention_heads"]
    assert field(r, "llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert field(r, "llama.context_length") == config["max_position_embeddings"]
    assert field(r, "llama.rope.freq_base") == pytest.approx(config["rope_theta"])
    assert field(r, "llama.rope.dimension_count") == config["hidden_size"] // config["num_attention_heads"]
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    assert field(r, "llama.vocab_size") == config["vocab_size"]
    if config["sliding_window"]:
        assert field(r, "llama.attention.sliding_window") == config["sliding_window"]
    else:
        assert r.get_field("llama.attention.sliding_window") is None
    if "num_local_experts" in config:
        assert field(r, "llama.expert_count") == config["num_local_experts"]
        assert field(r, "llama.expert_used_count") == config["num_experts_per_tok"]
    kind = {"bamboo": "drelu", "turbosparsemixtral": "drelu", "relu-llama": "reglu"}.get(arch, "swiglu")
    assert field(r, "turbosparse.format_version") == 1
    assert field(r, "turbosparse.ffn_kind") == kind
    assert field(r, "turbosparse.source_model_type") == config["model_type"]
    assert field(r, "turbosparse.down_layout") == ("neuron_major" if sparse else "standard")
    assert field(r, "turbosparse.predictor.present") is sparse
    if sparse:
        assert field(r, "turbosparse.predictor.input") == ("ffn_input" if arch == "turbosparsemixtral" else "residual")
        # relu-llama's predictor config.json says 0.25; the others default to the trained cut 0
        assert field(r, "turbosparse.predictor.threshold") == (0.25 if arch == "relu-llama" else 0.0)
    else:
        assert r.get_field("turbosparse.predictor.input") is None


def test_tokenizer_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "model"
    config = write_tiny_checkpoint(src, arch="bamboo")
    out = tmp_path / "out.gguf"
    assert convert(src, "--outfile", out) == 0
    r = GGUFReader(out)
    sp = spm.SentencePieceProcessor(model_proto=tiny_sentencepiece_model())
    n_sp = tiny_sentencepiece_size()
    tokens = field(r, "tokenizer.ggml.tokens")
    scores = field(r, "tokenizer.ggml.scores")
    types = field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(scores) == len(types) == config["vocab_size"]
    for i in range(n_sp):
        assert tokens[i] == sp.IdToPiece(i)
        # pieces named in added_tokens_decoder get score -1000, as llama.cpp's converter gives them
        assert scores[i] == pytest.approx(-1000.0 if i < 3 else sp.GetScore(i))
    # <unk>, <s>, </s> are "special" in added_tokens_decoder: control, as llama.cpp marks them
    assert types[0] == types[1] == types[2] == TokenType.CONTROL
    assert tokens[3 + 0x41] == "<0x41>" and types[3 + 0x41] == TokenType.BYTE
    assert sum(t == TokenType.BYTE for t in types) == 256
    assert any(t == TokenType.NORMAL for t in types[259:n_sp])
    # ChatML added tokens right after the SentencePiece pieces, as in TurboSparse
    assert tokens[n_sp] == "<|im_end|>" and types[n_sp] == TokenType.CONTROL
    assert tokens[n_sp + 1] == "<|im_start|>" and types[n_sp + 1] == TokenType.CONTROL
    assert tokens[n_sp + 2] == " tiny" and types[n_sp + 2] == TokenType.USER_DEFINED
    for i in range(n_sp + 3, config["vocab_size"]):
        assert tokens[i] == f"[PAD{i}]" and types[i] == TokenType.UNUSED
    assert field(r, "tokenizer.ggml.model") == "llama"
    assert field(r, "tokenizer.ggml.bos_token_id") == 1
    assert field(r, "tokenizer.ggml.eos_token_id") == 2          # config.json's, as llama.cpp
    assert field(r, "tokenizer.ggml.eot_token_id") == n_sp       # the real end of turn
    assert field(r, "tokenizer.ggml.unknown_token_id") == 0
    assert r.get_field("tokenizer.ggml.padding_token_id") is None
    assert field(r, "tokenizer.ggml.add_bos_token") is True
    assert field(r, "tokenizer.ggml.add_eos_token") is False
    assert field(r, "tokenizer.ggml.add_space_prefix") is True
    assert field(r, "tokenizer.chat_template") == CHATML_TEMPLATE


def test_add_dummy_prefix_false_is_read(tmp_path: Path) -> None:
    import io

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world tiny text"] * 50), model_writer=buf,
                                   vocab_size=300, model_type="bpe", byte_fallback=True, hard_vocab_limit=False,
                                   add_dummy_prefix=False, minloglevel=2, num_threads=1)
    from turbosparse.convert.tokenizer import sentencepiece_add_dummy_prefix

    assert sentencepiece_add_dummy_prefix(buf.getvalue()) is False
    assert sentencepiece_add_dummy_prefix(tiny_sentencepiece_model()) is True


def test_permutation_matches_llama_cpp_and_rope(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n_head, hd, n_embd = 4, 16, 64
    wq = rng.standard_normal((n_head * hd, n_embd)).astype(np.float32)
    wk = rng.standard_normal((2 * hd, n_embd)).astype(np.float32)
    np.testing.assert_array_equal(permute_qk(wq, n_head), permute_reference(wq, n_head))
    np.testing.assert_array_equal(permute_qk(wk, 2), permute_reference(wk, 2))

    # HF's rotate_half RoPE on the original rows gives the same attention scores as ggml's
    # adjacent-pair RoPE (mode 0) on the permuted rows
    x = rng.standard_normal(n_embd).astype(np.float64)
    theta = 10000.0 ** (-np.arange(hd // 2) * 2 / hd)

    def rope_hf(v: np.ndarray, pos: int) -> np.ndarray:
        v = v.reshape(-1, hd)
        c, s = np.cos(pos * theta), np.sin(pos * theta)
        a, b = v[:, : hd // 2], v[:, hd // 2:]
        return np.concatenate([a * c - b * s, b * c + a * s], axis=1)

    def rope_ggml(v: np.ndarray, pos: int) -> np.ndarray:
        v = v.reshape(-1, hd)
        c, s = np.cos(pos * theta), np.sin(pos * theta)
        a, b = v[:, 0::2], v[:, 1::2]
        out = np.empty_like(v)
        out[:, 0::2], out[:, 1::2] = a * c - b * s, a * s + b * c
        return out

    q_hf = rope_hf(wq @ x, 7)[0]
    k_hf = rope_hf(wk @ x, 3)[0]
    q_gg = rope_ggml(permute_qk(wq, n_head) @ x, 7)[0]
    k_gg = rope_ggml(permute_qk(wk, 2) @ x, 3)[0]
    assert q_hf @ k_hf == pytest.approx(q_gg @ k_gg, rel=1e-9)


def test_relu_llama_pt_predictors(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="writing a .pt fixture needs torch (the converter itself does not)")
    src = tmp_path / "model"
    config = write_tiny_checkpoint(src, arch="relu-llama", predictor_format="pt", dtype="bf16")
    out = tmp_path / "out.gguf"
    assert convert(src, "--outfile", out, "--outtype", "f32", "--predictors", predictor_dir(src)) == 0
    check_tensors(out, expected_tensors(src, config, predictors_from_dir=True), "f32")


def test_predictor_type_and_threshold_flags(tmp_path: Path) -> None:
    src = tmp_path / "model"
    config = write_tiny_checkpoint(src, arch="bamboo", dtype="f32")
    out = tmp_path / "out.gguf"
    assert convert(src, "--outfile", out, "--outtype", "q4_0", "--predictor-type", "f32",
                   "--threshold", "-1.5", "--predictor-input", "ffn_input", "--name", "tiny") == 0
    check_tensors(out, expected_tensors(src, config), "q4_0", predictor_type="f32")
    r = GGUFReader(out)
    assert field(r, "turbosparse.predictor.threshold") == -1.5
    assert field(r, "turbosparse.predictor.input") == "ffn_input"
    assert field(r, "general.name") == "tiny"


@pytest.mark.parametrize("arch", ["bamboo", "turbosparsemixtral", "relu-llama"])
def test_no_predictor(tmp_path: Path, arch: str) -> None:
    src = tmp_path / "model"
    config = write_tiny_checkpoint(src, arch=arch, with_predictor=arch == "bamboo")
    out = tmp_path / "out.gguf"
    assert convert(src, "--outfile", out, "--no-predictor") == 0
    r = GGUFReader(out)
    assert field(r, "turbosparse.predictor.present") is False
    assert not [t.name for t in r.tensors if "pred" in t.name]
    check_tensors(out, expected_tensors(src, config, with_predictor=False), "f16")


def test_tied_embeddings_write_no_output(tmp_path: Path) -> None:
    src = tmp_path / "model"
    config = write_tiny_checkpoint(src, arch="llama", tied=True)
    out = tmp_path / "out.gguf"
    assert convert(src, "--outfile", out) == 0
    check_tensors(out, expected_tensors(src, config, with_predictor=False), "f16")
    assert "output.weight" not in [t.name for t in GGUFReader(out).tensors]


def test_default_outfile_and_force(tmp_path: Path) -> None:
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="llama")
    assert convert(src) == 0
    default = src / "model-f16.gguf"
    assert default.is_file()
    before = default.read_bytes()
    assert convert(src) == 1                         # exists: refused
    assert default.read_bytes() == before
    assert convert(src, "--force", "--outtype", "f32") == 0 and (src / "model-f32.gguf").is_file()
    assert convert(src, "--force") == 0 and default.is_file()


def test_hf_repo_uses_snapshot_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    src = tmp_path / "snapshot"
    config = write_tiny_checkpoint(src, arch="mistral")
    calls = []

    def snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        calls.append((repo_id, allow_patterns))
        return str(src)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    out = tmp_path / "out.gguf"
    assert convert("--hf-repo", "someone/Tiny-Mistral", "--outfile", out) == 0
    assert calls and calls[0][0] == "someone/Tiny-Mistral" and "*.safetensors" in calls[0][1]
    assert field(GGUFReader(out), "general.name") == "Tiny-Mistral"
    check_tensors(out, expected_tensors(src, config, with_predictor=False), "f16")


def test_script_from_checkout_runs_without_pythonpath(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "convert" / "convert-turbosparse.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="bamboo", n_layer=1)
    out = tmp_path / "out.gguf"
    res = subprocess.run([sys.executable, str(script), str(src), "--outfile", str(out)], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "parameters" in res.stdout and "file size" in res.stdout
    assert out.is_file()
    res = subprocess.run([sys.executable, str(script), "--help"], env=env, capture_output=True, text=True)
    assert res.returncode == 0
    for flag in ("--outfile", "--outtype", "--predictors", "--no-predictor", "--hf-repo", "--from-powerinfer",
                 "--force", "--predictor-type", "--threshold", "--predictor-input"):
        assert flag in res.stdout


def test_summary_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model"
    config = write_tiny_checkpoint(src, arch="bamboo")
    out = tmp_path / "out.gguf"
    assert main([str(src), "--outfile", str(out)]) == 0
    text = capsys.readouterr().out
    expected = expected_tensors(src, config)
    n_params = sum(a.size for a in expected.values())
    n_pred = sum(a.size for n, a in expected.items() if "ffn_pred" in n)
    assert f"({n_params})" in text and f"({n_pred})" in text
    assert f"({out.stat().st_size} bytes)" in text



def test_installed_command(tmp_path: Path) -> None:
    import shutil
    import subprocess

    exe = shutil.which("convert-turbosparse")
    if exe is None:
        pytest.skip("the package is not installed (pip install .): no convert-turbosparse command on PATH")
    src = tmp_path / "model"
    write_tiny_checkpoint(src, arch="mistral", n_layer=1)
    out = tmp_path / "out.gguf"
    res = subprocess.run([exe, str(src), "--outfile", str(out), "--outtype", "q8_0"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert field(GGUFReader(out), "turbosparse.ffn_kind") == "swiglu"


def test_converter_never_loads_native_code() -> None:
    import subprocess
    import sys

    code = ("import sys, turbosparse.convert.cli, turbosparse.convert.hf_llama, turbosparse.convert.powerinfer, "
            "turbosparse.convert.writer; "
            "bad = [m for m in sys.modules if m == 'cffi' or m.startswith('_cffi') or 'turbosparse_cffi' in m "
            "or m.startswith('turbosparse.') and not m.startswith('turbosparse.convert')]; print(bad)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"

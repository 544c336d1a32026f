"""The bundled model's pipeline (turbosparse.train.default_model): the corpus and tokenizer
steps (numpy/sentencepiece only), and, where torch is installed, that the torch model computes
what the runtime computes and that the whole pipeline runs end to end on its tiny preset."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from numpy_reference import RefConfig, forward
from turbosparse.train.default_model.corpus import (HELD_OUT_EVERY, Document, chat_examples, docstring_documents,
                                                    is_held_out, split, topic_documents)
from turbosparse.train.default_model.tokenizer import SPECIALS, Encoder, train_sentencepiece, write_tokenizer


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return sorted(topic_documents() + docstring_documents(), key=lambda d: d.title)


def test_corpus_is_english_docs_with_a_stable_held_out_split(docs) -> None:
    assert len(docs) > 1000
    titles = [d.title for d in docs]
    assert len(set(titles)) == len(titles)
    assert any(t == "topic:for" for t in titles) and any(t.startswith("json.") for t in titles)
    assert sum(len(d.text) for d in docs) > 500_000
    train, held = split(docs)
    assert set(d.title for d in train).isdisjoint(d.title for d in held)
    assert len(train) + len(held) == len(docs)
    assert 0.5 / HELD_OUT_EVERY < len(held) / len(docs) < 2.0 / HELD_OUT_EVERY
    # the split of a document depends on its title only
    assert split(docs[::2])[1] == [d for d in held if d in docs[::2]]
    assert all(is_held_out(d) for d in held)


def test_docstring_extraction_is_deterministic(docs) -> None:
    again = docstring_documents()
    assert [d for d in docs if not d.title.startswith("topic:")] == sorted(again, key=lambda d: d.title)


def test_chat_examples_are_chatml(docs) -> None:
    chats = chat_examples(split(docs)[0])
    assert len(chats) > 100
    for c in chats[:50]:
        assert c.startswith("<|im_start|>user\n") and c.endswith("<|im_end|>\n")
        assert "<|im_start|>assistant\n" in c


def test_tokenizer_is_llama_style_with_chatml(tmp_path, docs) -> None:
    import sentencepiece as spm

    model = train_sentencepiece([d.text for d in docs[:300]], 500, threads=1)
    sp = spm.SentencePieceProcessor(model_proto=model)
    text = "def f(x):\n    return  x + 12345  # two  spaces"
    pieces = sp.encode(text, out_type=str)
    assert sp.decode(sp.encode(text)) == text  # identity normaliser, no whitespace collapsing
    assert "<0x0A>" in pieces  # byte fallback
    words = [p.strip("\u2581") for p in pieces if not p.startswith("<0x")]
    assert all(not any(ch.isdigit() for ch in w) or len(w) == 1 for w in words)  # split digits
    n_vocab = write_tokenizer(tmp_path, model)
    assert n_vocab == sp.vocab_size() + 2
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["added_tokens_decoder"][str(sp.vocab_size())]["content"] == SPECIALS[0]
    ids = Encoder(model).encode("<|im_start|>user\nhi<|im_end|>\n")
    assert ids[0] == sp.vocab_size() + 1 and sp.vocab_size() in ids


# ---------------------------------------------------------------------------------------
# with torch

def tiny_torch_model(seed: int = 0):  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    from turbosparse.train.default_model.llama_torch import LlamaConfig, LlamaDRelu

    torch.manual_seed(seed)
    cfg = LlamaConfig(n_vocab=640, n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=96, n_ctx=32)
    model = LlamaDRelu(cfg)
    with torch.no_grad():  # larger weights than the init, so every part of the math matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() > 1 else 0.2))
    return model.eval()


def test_torch_model_computes_the_reference_math(tmp_path) -> None:
    import torch

    model = tiny_torch_model()
    c = model.cfg
    tokens = [1, 40, 7, 21, 9, 3, 50, 64, 12, 600]
    with torch.no_grad():
        logits, acts = model(torch.tensor([tokens]))
    w = {k: v.double().numpy() for k, v in model.state_dict().items()}
    rc = RefConfig(n_vocab=c.n_vocab, n_embd=c.n_embd, n_layer=c.n_layer, n_ff=c.n_ff, n_head=c.n_head,
                   n_head_kv=c.n_head_kv, rms_eps=c.rms_eps, rope_theta=c.rope_theta, ffn_kind="drelu")
    ref = forward(rc, w, tokens)  # tied: the reference falls back to embed_tokens for the head
    np.testing.assert_allclose(logits[0].numpy(), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    assert 0 < float((acts[0] > 0).float().mean()) < 1


def test_saved_checkpoint_runs_the_same_in_the_runtime(tmp_path) -> None:
    import torch

    from runtime_api import Context, Model
    from turbosparse.train.default_model.pipeline import save_hf

    model = tiny_torch_model(1)
    sp_model = train_sentencepiece([d.text for d in topic_documents()[:40]], model.cfg.n_vocab - 2, threads=1)
    save_hf(tmp_path / "hf", model, sp_model)
    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "turbosparse.convert", str(tmp_path / "hf"), "--outfile", str(out),
                        "--outtype", "f32", "--no-predictor", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tokens = [1, 40, 7, 21, 9, 3, 50, 64, 12, 600]
    with torch.no_grad():
        expected = model(torch.tensor([tokens]))[0][0].numpy()
    got = Context(Model(out), n_ctx=32, mode="dense").decode(tokens)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3 * np.abs(expected).max())
    exact = Context(Model(out), n_ctx=32, mode="exact").decode(tokens)
    np.testing.assert_allclose(exact, expected, rtol=0, atol=1e-3 * np.abs(expected).max())


def test_tiny_pipeline_end_to_end(tmp_path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "default.gguf"
    r = subprocess.run([sys.executable, "-m", "turbosparse.train.default_model", "--preset", "tiny", "--workdir",
                        str(tmp_path / "work"), "--out", str(out), "--threads", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert report["gguf_bytes"] == out.stat().st_size
    ppl = report["measured"]["perplexity"]
    assert ppl["exact"]["perplexity"] == pytest.approx(ppl["dense"]["perplexity"], rel=1e-3)
    assert ppl["predicted"]["computed_share"] < 1 and ppl["exact"]["computed_share"] < 1
    assert ppl["predicted"]["recall"] > 0.8  # 0.95 is targeted on held-out training text
    assert len(ppl["dense"]["layers"]) == report["model"]["n_layer"]
    # the runtime's tokenizer gives the ids the model was trained on, ChatML included
    from turbosparse.model import Model

    text = "<|im_start|>user\nWhat does json.dumps do?<|im_end|>\n<|im_start|>assistant\n"
    enc = Encoder((tmp_path / "work" / "hf" / "tokenizer.model").read_bytes())
    with Model(out, n_ctx=64) as m:
        assert m.tokenize(text, add_bos=False, special=True) == enc.encode(text)
        assert m.token_eot() == enc.special_ids["<|im_end|>"]
    assert (tmp_path / "work" / "report.md").read_text().count("| predicted |") == 1


def test_presets_fit_the_size_limit() -> None:
    from turbosparse.train.default_model.pipeline import MAX_GGUF_BYTES, PRESETS

    p = PRESETS["full"]
    m = p.model
    n_vocab = p.n_pieces + 2
    per_layer = 4 * m["n_embd"] ** 2 + 3 * m["n_embd"] * m["n_ff"] + p.predictor_rank * (m["n_embd"] + m["n_ff"])
    n = n_vocab * m["n_embd"] + m["n_layer"] * per_layer
    assert n * 34 / 32 < 0.8 * MAX_GGUF_BYTES  # q8_0: 34 bytes per 32 weights

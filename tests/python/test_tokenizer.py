"""The C tokenizer (ggml_sparse/runtime/tokenizer.c) against the sentencepiece library.

A SentencePiece BPE model is trained here with the settings Llama/Mistral vocabularies use
(identity normaliser, no whitespace collapsing, byte fallback, split digits, dummy prefix)
plus the ChatML tokens as user-defined symbols; its pieces are written to a GGUF holding only
the tokenizer keys (named as llama.cpp names them, docs/gguf-format.md), which the C code reads
with ggml's gguf reader. Ids, decoded text and the streaming decoder must equal what
sentencepiece gives, over fixed strings and many random ones.
"""
from __future__ import annotations

import io
import os
import random
import sys
from pathlib import Path

import cffi
import pytest

spm = pytest.importorskip("sentencepiece")
gguf = pytest.importorskip("gguf")

TS_TOKENIZE_ERROR = -(2**31)
CHATML = ["<|im_start|>", "<|im_end|>"]
# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _open() -> tuple[cffi.FFI, object]:
    """The installed package's library; TS_LIB=path overrides it (a build tree's
    libggml-sparse.so)."""
    try:
        if not os.environ.get("TS_LIB"):
            from turbosparse._lib import ffi, lib  # type: ignore

            if hasattr(lib, "ts_tokenize"):
                return ffi, lib
    except ImportError:
        pass
    pkg = Path(__file__).resolve().parents[2] / "python" / "turbosparse"  # the source tree
    try:
        import turbosparse

        # __file__ is None while the package is a namespace package (no __init__.py yet)
        dirs = [Path(turbosparse.__file__).parent] if turbosparse.__file__ else list(map(Path, turbosparse.__path__))
        pkg = next((d for d in dirs if (d / "lib" / "libggml-sparse.so").exists()), pkg)
    except ImportError:  # not installed: TS_LIB must name the library
        pass
    ffi = cffi.FFI()
    src = Path(__file__).resolve().parents[2] / "python" / "turbosparse" / "cdef"
    cdef_dir = pkg / "cdef" if (pkg / "cdef" / "tokenizer.h").exists() else src
    ffi.cdef((cdef_dir / "tokenizer.h").read_text())
    lib_path = os.environ.get("TS_LIB") or str(pkg / "lib" / "libggml-sparse.so")
    return ffi, ffi.dlopen(lib_path)


ffi, lib = _open()


# ---- the corpus and the SentencePiece model ------------------------------------------------

def _corpus() -> list[str]:
    """English prose, code and a little of everything else, from the stdlib (no downloads)."""
    import codecs
    import collections
    import contextlib
    import inspect
    import json as json_mod
    import textwrap

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this  # noqa: F401
    lines: list[str] = codecs.decode(sys.modules["this"].s, "rot13").splitlines()
    for mod in (collections, inspect, json_mod, textwrap, random, io):
        lines += (inspect.getdoc(mod) or "").splitlines()
        for name, obj in sorted(vars(mod).items()):
            if callable(obj) and not name.startswith("_"):
                lines += (inspect.getdoc(obj) or "").splitlines()
    lines += inspect.getsource(textwrap).splitlines()  # code, indentation, runs of spaces
    lines += [
        "Les élèves ont étudié à l'école, où ça s'est très bien passé.",
        "Größe, Straße, über, Mädchen — naïve café résumé.",
        "El niño comió piñata; ¿qué más?",
        "日本語のテキストも少し。東京は大きい。",
        "中文也有一点。你好，世界。",
        "Emoji: 😀 🚀 👍🏽 ❤️",
        "Numbers 1234567890, 3.14159, 2024-05-17, 0x1F600.",
        "\tTabbed\tcolumns\tand  double  spaces   here.",
        "<|im_start|>user Hello there<|im_end|> <|im_start|>assistant Hi!<|im_end|>",
    ] * 3
    return [ln for ln in lines if ln.strip()]


def _train(vocab_size: int = 800) -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        character_coverage=0.995, user_defined_symbols=CHATML, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, minloglevel=2, num_threads=1)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sp() -> "spm.SentencePieceProcessor":
    return spm.SentencePieceProcessor(model_proto=_train())


def _types(sp, special_type: int) -> list[int]:
    out = []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if sp.is_unknown(i):
            out.append(UNKNOWN)
        elif sp.is_control(i):
            out.append(CONTROL)
        elif sp.is_byte(i):
            out.append(BYTE)
        elif sp.is_unused(i):
            out.append(UNUSED)
        elif piece in CHATML:
            out.append(special_type)
        else:
            out.append(NORMAL)
    return out


def write_tokenizer_gguf(path: Path, sp, special_type: int = USER_DEFINED, model: str = "llama",
                         drop: tuple[str, ...] = (), types: list[int] | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    if "model" not in drop:
        w.add_tokenizer_model(model)
    n = sp.vocab_size()
    if "tokens" not in drop:
        w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types(types if types is not None else _types(sp, special_type))
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_uint32("tokenizer.ggml.eot_token_id", sp.piece_to_id("<|im_end|>"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class Tok:
    def __init__(self, path: Path):
        err = ffi.new("char[512]")
        self.ptr = lib.ts_tokenizer_from_file(str(path).encode(), err, 512)
        if self.ptr == ffi.NULL:
            raise ValueError(ffi.string(err).decode())
        self.info = lib.ts_tokenizer_get_info(self.ptr)

    def encode(self, text: str | bytes, add_bos: bool = False, special: bool = True) -> list[int]:
        data = text.encode() if isinstance(text, str) else text
        n = lib.ts_tokenize(self.ptr, data, len(data), add_bos, special, ffi.NULL, 0)
        assert n != TS_TOKENIZE_ERROR
        if n == 0:
            return []
        assert n < 0, "a count larger than n_max must come back as -(needed)"
        out = ffi.new("int32_t[]", -n)
        m = lib.ts_tokenize(self.ptr, data, len(data), add_bos, special, out, -n)
        assert m == -n
        return list(out)

    def decode(self, ids: list[int], render_special: bool = False) -> bytes:
        arr = ffi.new("int32_t[]", ids or [0])
        n = lib.ts_detokenize(self.ptr, arr, len(ids), render_special, ffi.NULL, 0)
        assert n != TS_TOKENIZE_ERROR
        if n == 0:
            return b""
        assert n < 0
        buf = ffi.new("char[]", -n)
        assert lib.ts_detokenize(self.ptr, arr, len(ids), render_special, buf, -n) == -n
        return ffi.buffer(buf, -n)[:]

    def stream(self, ids: list[int], at_text_start: bool = True) -> list[bytes]:
        """The chunks the streaming decoder prints, one per id, then the flush."""
        s = ffi.new("struct ts_utf8_stream *")
        lib.ts_utf8_stream_init(s, self.ptr, at_text_start, False)
        room = 3 * (self.info.max_piece_bytes + 4)
        buf = ffi.new("char[]", room)
        chunks = []
        for i in ids:
            n = lib.ts_utf8_stream_push(s, self.ptr, i, buf, room)
            assert n >= 0
            chunks.append(ffi.buffer(buf, n)[:])
        n = lib.ts_utf8_stream_flush(s, buf, room)
        assert n >= 0
        chunks.append(ffi.buffer(buf, n)[:])
        return chunks

    def close(self) -> None:
        if self.ptr != ffi.NULL:
            lib.ts_tokenizer_free(self.ptr)
            self.ptr = ffi.NULL

    def __del__(self):
        self.close()


@pytest.fixture(scope="module")
def tok(sp, tmp_path_factory) -> Tok:
    return Tok(write_tokenizer_gguf(tmp_path_factory.mktemp("tok") / "tok.gguf", sp))


# ---- texts ------------------------------------------------------------------------------------

FIXED = [
    "", " ", "  ", "   ", "\n", "\n\n\n", "\t", " \t \n ", "a", "Hello world", " Hello world",
    "Hello world ", "  leading and trailing  ", "multiple    spaces   between    words",
    "line one\nline two\n\nline four\n", "tabs\there\tand\tthere",
    "Digits 1234567890 and 3.14159 and 2024-05-17", "007 0000 99999999999",
    "Les élèves ont étudié à l'école", "naïve café résumé Größe Straße",
    "日本語のテキスト。東京は大きい。", "中文也有一点。你好，世界。", "한국어 텍스트", "Ελληνικά και русский",
    "Emoji 😀 🚀 👍🏽 ❤️ 🇫🇷 👨‍👩‍👧", "😀", "🦀🦀🦀", "∑∫√∞ ≤ ≥ ≠", "\u00a0non-breaking\u00a0spaces",
    "def f(x):\n    return x ** 2  # square\n\nif __name__ == '__main__':\n\tprint(f(3))\n",
    "for (int i = 0; i < n; i++) { a[i] = b[i] * c; }",
    '{"key": [1, 2, 3], "nested": {"a": null}}', "https://example.com/path?q=1&r=two#frag",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|><|im_start|>", "text<|im_end|>text", " <|im_start|> spaced <|im_end|> ",
    "<|im_start", "|im_end|>", "<|im_start|x", "<<|im_start|>>",
    "The Zen of Python, by Tim Peters", "Beautiful is better than ugly.",
    "\u2581 already an escaped space \u2581\u2581", "\x00nul\x00inside", "\x01\x02\x7f control chars",
    "\ufffd replacement", "\U0010ffff max code point", "a" * 300, " " * 50, "ab " * 100,
]


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = (list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ0123456789.,;:!?'\"()[]{}<>|_-+=*/\\#@")
            + [" ", " ", " ", "  ", "\n", "\t", "\r\n"] + list("éèàçüöäßñ") + list("日本語中文字")
            + ["😀", "🚀", "👍🏽", "❤️", "\u200d", "🦀"] + CHATML + ["<|im_", "|>", "the ", "ing ", "tion"])
    words = " ".join(_corpus()).split(" ")
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 30)):
            parts.append(rng.choice(pool) if rng.random() < 0.6 else rng.choice(words))
        out.append("".join(parts))
    return out


# ---- tests --------------------------------------------------------------------------------

def test_vocab_info(tok, sp):
    info = tok.info
    assert info.n_vocab == sp.vocab_size()
    assert (info.bos_id, info.eos_id, info.unk_id) == (sp.bos_id(), sp.eos_id(), sp.unk_id())
    assert info.eot_id == sp.piece_to_id("<|im_end|>")
    assert info.add_bos and not info.add_eos and info.add_space_prefix and info.byte_fallback
    assert lib.ts_token_is_eog(tok.ptr, info.eos_id) and lib.ts_token_is_eog(tok.ptr, info.eot_id)
    assert not lib.ts_token_is_eog(tok.ptr, info.bos_id)
    assert ffi.string(lib.ts_token_text(tok.ptr, sp.piece_to_id("<|im_start|>"))) == b"<|im_start|>"
    assert lib.ts_token_text(tok.ptr, info.n_vocab) == ffi.NULL
    for i in range(info.n_vocab):
        text = ffi.string(lib.ts_token_text(tok.ptr, i))
        assert text == sp.id_to_piece(i).encode()
        assert lib.ts_token_lookup(tok.ptr, text, len(text)) == sp.piece_to_id(sp.id_to_piece(i))
    assert lib.ts_token_lookup(tok.ptr, b"no such piece", 13) == -1


@pytest.mark.parametrize("text", FIXED, ids=range(len(FIXED)))
def test_encode_equals_sentencepiece(tok, sp, text):
    assert tok.encode(text) == sp.encode(text)


def test_encode_random_texts_equal_sentencepiece(tok, sp):
    texts = _random_texts(1500, seed=1)
    bad = [t for t in texts if tok.encode(t) != sp.encode(t)]
    assert not bad, f"{len(bad)} of {len(texts)} differ, first: {bad[0]!r}"


def test_encode_corpus_and_long_text(tok, sp):
    lines = _corpus()
    assert all(tok.encode(ln) == sp.encode(ln) for ln in lines)
    long_text = "\n".join(lines)
    assert len(long_text) > 10000
    assert tok.encode(long_text) == sp.encode(long_text)


def test_encode_invalid_utf8_equals_sentencepiece(tok, sp):
    # SentencePiece turns each byte that is not valid UTF-8 into U+FFFD
    for data in (b"ab\xff\xc3", b"\xc3", b"\xe2\x82", b"x\xe2\x82y", b"\xed\xa0\x80 surrogate",
                 b"\xc0\xaf overlong", b"\xf4\x90\x80\x80 too big", b"\x80\x80", b"ok \xf0\x9f\x98"):
        assert tok.encode(data) == sp.encode(data), data


def test_add_bos(tok, sp):
    assert tok.encode("Hello", add_bos=True) == [sp.bos_id()] + sp.encode("Hello")
    assert tok.encode("", add_bos=True) == [sp.bos_id()]


def test_n_max_too_small(tok, sp):
    ids = sp.encode("Hello world, again and again")
    out = ffi.new("int32_t[]", len(ids))
    data = b"Hello world, again and again"
    assert lib.ts_tokenize(tok.ptr, data, len(data), False, True, out, len(ids) - 1) == -len(ids)
    assert lib.ts_tokenize(tok.ptr, data, len(data), False, True, out, len(ids)) == len(ids)
    assert list(out) == ids


def test_special_false_is_plain_text(tok, sp):
    im_start, im_end = sp.piece_to_id("<|im_start|>"), sp.piece_to_id("<|im_end|>")
    text = "<|im_start|>user\nHi<|im_end|>"
    on = tok.encode(text, special=True)
    off = tok.encode(text, special=False)
    assert on.count(im_start) == 1 and on.count(im_end) == 1
    assert im_start not in off and im_end not in off
    assert tok.decode(off) == text.encode()


def test_control_tokens(sp, tmp_path):
    # as a converter writes HF's special added tokens: control (type 3)
    t = Tok(write_tokenizer_gguf(tmp_path / "ctl.gguf", sp, special_type=CONTROL))
    im_start = sp.piece_to_id("<|im_start|>")
    for text in FIXED + _random_texts(200, seed=2):
        assert t.encode(text, special=True) == sp.encode(text), text
    ids = t.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids.count(im_start) == 1
    assert t.decode(ids) == b"user\nHi"  # control tokens are invisible, as SentencePiece's
    assert t.decode(ids, render_special=True) == b"<|im_start|>user\nHi<|im_end|>"
    # "<s>" is BOS's text: a token with special=true (after the dummy-prefix "▁", as
    # SentencePiece puts it before a leading user-defined symbol), plain text without
    assert t.encode("<s>x", special=True)[:2] == [sp.piece_to_id("\u2581"), sp.bos_id()]
    assert sp.bos_id() not in t.encode("<s>x", special=False)


@pytest.mark.parametrize("text", [t for t in FIXED if t.isprintable() or "\n" in t])
def test_decode_equals_sentencepiece_and_round_trips(tok, sp, text):
    ids = sp.encode(text)
    assert tok.decode(ids) == sp.decode(ids).encode()
    if "\u2581" not in text:  # a literal U+2581 decodes as a space, in SentencePiece too
        assert tok.decode(ids) == text.encode()  # identity normaliser: lossless


def test_decode_random_ids_equals_sentencepiece(tok, sp):
    # random ids, rich in byte tokens: broken UTF-8, controls, unk, leading-space rules
    rng = random.Random(3)
    n = sp.vocab_size()
    byte_ids = [i for i in range(n) if sp.is_byte(i)]
    emoji_bytes = [sp.piece_to_id(f"<0x{b:02X}>") for b in "😀".encode()]
    for _ in range(1500):
        ids = []
        for _ in range(rng.randint(0, 12)):
            r = rng.random()
            if r < 0.4:
                ids.append(rng.choice(byte_ids))
            elif r < 0.5:
                ids += emoji_bytes[: rng.randint(1, 4)]
            else:
                ids.append(rng.randrange(n))
        want = sp.decode(ids).encode()
        assert tok.decode(ids) == want, ids
        assert b"".join(tok.stream(ids)) == want, ids


def test_stream_prints_split_characters_once_whole(tok, sp):
    text = "Emoji 😀 and 🦀 and 👍🏽 end"
    ids = sp.encode(text)
    assert any(sp.is_byte(i) for i in ids), "the test needs characters encoded as byte tokens"
    chunks = tok.stream(ids)
    assert b"".join(chunks) == text.encode()
    for chunk, i in zip(chunks, ids + [None]):
        chunk.decode("utf-8")  # every chunk is whole characters
        if i is not None and sp.is_byte(i):
            b = int(sp.id_to_piece(i)[3:5], 16)
            # a byte token prints nothing until its character is complete, then all of it
            assert chunk == b"" or chunk.endswith(bytes([b]))
    crab = "🦀".encode()
    assert sum(c.count(crab) for c in chunks) == 1 and crab in chunks
    # continuing a text already shown keeps the leading space of the first piece
    assert b"".join(tok.stream(sp.encode("Hello"), at_text_start=False)) == b" Hello"


def test_stream_buffer_too_small_leaves_state(tok, sp):
    s = ffi.new("struct ts_utf8_stream *")
    lib.ts_utf8_stream_init(s, tok.ptr, True, False)
    ids = sp.encode("Hello world")
    buf = ffi.new("char[64]")
    out = b""
    for i in ids:
        need = lib.ts_utf8_stream_push(s, tok.ptr, i, buf, 0)
        if need < 0:
            n = lib.ts_utf8_stream_push(s, tok.ptr, i, buf, -need)
            assert n == -need
            out += ffi.buffer(buf, n)[:]
    assert out == b"Hello world"
    assert lib.ts_utf8_stream_push(s, tok.ptr, tok.info.n_vocab, buf, 64) == TS_TOKENIZE_ERROR


def test_token_piece(tok, sp):
    buf = ffi.new("char[64]")
    the = sp.piece_to_id("\u2581the")
    assert the != sp.unk_id()
    n = lib.ts_token_piece(tok.ptr, the, False, buf, 64)
    assert ffi.buffer(buf, n)[:] == b" the"
    nl = sp.piece_to_id("<0x0A>")
    n = lib.ts_token_piece(tok.ptr, nl, False, buf, 64)
    assert ffi.buffer(buf, n)[:] == b"\n"
    assert lib.ts_token_piece(tok.ptr, sp.bos_id(), False, buf, 64) == 0
    n = lib.ts_token_piece(tok.ptr, sp.bos_id(), True, buf, 64)
    assert ffi.buffer(buf, n)[:] == b"<s>"
    assert lib.ts_token_piece(tok.ptr, the, False, buf, 2) == -4


def test_bad_files_name_the_problem(sp, tmp_path):
    def err_of(path: Path) -> str:
        with pytest.raises(ValueError) as e:
            Tok(path)
        return str(e.value)

    assert "'bert'" in err_of(write_tokenizer_gguf(tmp_path / "a.gguf", sp, model="bert"))
    # a byte-level BPE vocabulary without its pre-tokenizer (or merges) is refused, naming the key
    assert "tokenizer.ggml.pre" in err_of(write_tokenizer_gguf(tmp_path / "a2.gguf", sp, model="gpt2"))
    assert "tokenizer.ggml.model" in err_of(write_tokenizer_gguf(tmp_path / "b.gguf", sp, drop=("model",)))
    assert "tokenizer.ggml.tokens" in err_of(write_tokenizer_gguf(tmp_path / "c.gguf", sp, drop=("tokens",)))
    short = _types(sp, USER_DEFINED)[:-1]
    assert "token_type" in err_of(write_tokenizer_gguf(tmp_path / "d.gguf", sp, types=short))
    bad = _types(sp, USER_DEFINED)
    bad[10] = 9
    assert "token_type[10]" in err_of(write_tokenizer_gguf(tmp_path / "e.gguf", sp, types=bad))
    assert "cannot read" in err_of(tmp_path / "missing.gguf")

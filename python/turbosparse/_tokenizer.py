"""The C tokenizer (ggml_sparse/runtime/tokenizer.h) behind a small Python class.

Special tokens in text follow llama.cpp (and Hugging Face's legacy Llama tokenizer): the text is
split at the texts of control / user-defined tokens, each plain fragment is tokenized on its
own (so it gets its own dummy-prefix space) and the special ids go between them.
"""
from __future__ import annotations

import operator
import re
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

from ._lib import load

ffi, lib = load()
from .errors import InvalidTokenError, TokenizeError

_CONTROL, _USER_DEFINED = 3, 4
_TOKENIZE_ERROR = -(2**31)


def token_ids(ids: Iterable[Any], n_vocab: int, what: str = "token id") -> List[int]:
    """ids as a list of Python ints, each checked to lie in the vocabulary."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"expected a sequence of {what}s, got {type(ids).__name__}")
    out: List[int] = []
    for i, t in enumerate(ids):
        try:
            v = operator.index(t)
        except TypeError:
            raise TypeError(f"{what} at index {i} is a {type(t).__name__}, not an int") from None
        if not 0 <= v < n_vocab:
            raise InvalidTokenError(f"{what} {v} at index {i} is outside the vocabulary (0..{n_vocab - 1})")
        out.append(v)
    return out


class Tokenizer:
    """Owns a struct ts_tokenizer built from a loaded model's GGUF metadata."""

    def __init__(self, gguf_ctx: Any) -> None:
        err = ffi.new("char[]", 1024)
        ptr = lib.ts_tokenizer_from_gguf(ffi.cast("struct gguf_context *", gguf_ctx), err, 1024)
        if ptr == ffi.NULL:
            raise TokenizeError(ffi.string(err).decode("utf-8", "replace") or "cannot build the tokenizer")
        self._ptr = ptr
        info = lib.ts_tokenizer_get_info(ptr)
        self.n_vocab: int = info.n_vocab
        self.bos_id: int = info.bos_id
        self.eos_id: int = info.eos_id
        self.eot_id: int = info.eot_id
        self.add_bos: bool = bool(info.add_bos)
        self._stream_buf_size = 3 * (info.max_piece_bytes + 4)
        self._specials: Optional[List[Tuple[str, int]]] = None
        self._pattern: Optional["re.Pattern[bytes]"] = None
        self._special_ids: dict = {}
        self._user_pattern: Optional["re.Pattern[bytes]"] = None
        self._user_ids: dict = {}

    def close(self) -> None:
        if self._ptr is not None:
            lib.ts_tokenizer_free(self._ptr)
            self._ptr = None

    # ---- text -> ids -------------------------------------------------------------------
    def _encode(self, data: bytes, add_bos: bool) -> List[int]:
        n_max = len(data) + 8
        while True:
            out = ffi.new("int32_t[]", n_max)
            n = lib.ts_tokenize(self._ptr, data, len(data), add_bos, False, out, n_max)
            if n == _TOKENIZE_ERROR:
                raise TokenizeError(f"cannot tokenize a text of {len(data)} bytes")
            if n >= 0:
                return list(out[0:n])
            n_max = -n

    def specials(self) -> List[Tuple[str, int]]:
        """(text, id) of every control and user-defined token, longest text first."""
        if self._specials is None:
            found = []
            for i in range(self.n_vocab):
                if lib.ts_token_get_type(self._ptr, i) in (_CONTROL, _USER_DEFINED):
                    text = self.token_text(i)
                    if text:
                        found.append((text, i))
            found.sort(key=lambda t: -len(t[0]))
            self._specials = found
        return self._specials

    def _special_pattern(self) -> "re.Pattern[bytes]":
        if self._pattern is None:
            texts = [(t.encode("utf-8"), i) for t, i in self.specials()]
            self._special_ids = {}
            for t, i in texts:
                self._special_ids.setdefault(t, i)
            # alternatives are tried in order: longest first gives the longest match
            self._pattern = re.compile(b"|".join(re.escape(t) for t, _ in texts) if texts else b"(?!)")
        return self._pattern

    def tokenize(self, text: Union[str, bytes], add_bos: bool, special: bool) -> List[int]:
        if isinstance(text, str):
            data = text.encode("utf-8", "surrogatepass")
        elif isinstance(text, (bytes, bytearray, memoryview)):
            data = bytes(text)
        else:
            raise TypeError(f"text must be str or bytes, not {type(text).__name__}")
        bos = [self.bos_id] if add_bos and self.bos_id >= 0 else []
        if not special:
            return bos + self._encode(data, False)
        ids: List[int] = []
        start = 0
        for m in self._special_pattern().finditer(data):
            if m.start() > start:
                ids += self._encode(data[start:m.start()], False)
            ids.append(self._special_ids[m.group()])
            start = m.end()
        if start < len(data):
            ids += self._encode(data[start:], False)
        if bos and ids[:1] == bos:  # the text (a chat template) begins with BOS itself
            bos = []
        return bos + ids

    def _user_defined_pattern(self) -> "re.Pattern[bytes]":
        if self._user_pattern is None:
            texts = [(t.encode("utf-8"), i) for t, i in self.specials() if not self.is_control(i)]
            for t, i in texts:
                self._user_ids.setdefault(t, i)
            self._user_pattern = re.compile(b"|".join(re.escape(t) for t, _ in texts) if texts else b"(?!)")
        return self._user_pattern

    def is_control(self, token: int) -> bool:
        return lib.ts_token_get_type(self._ptr, token) == _CONTROL

    def tokenize_pieces(self, pieces: Iterable[Tuple[str, bool]], add_bos: bool) -> List[int]:
        """Ids of the pieces' joined text, each piece (text, control): pieces with control=True
        (a chat template's own text) have the texts of control and user-defined tokens turned
        into those tokens; the others (a message's content) only those of user-defined tokens,
        which are ordinary vocabulary (SentencePiece, Hugging Face and llama.cpp's
        parse_special=false match them too), so "<|im_end|>" in them stays text. The text
        between two such tokens is tokenized as one fragment wherever the pieces' borders fall,
        so when no plain piece holds a control token's text the ids equal tokenize(joined text,
        special=True)."""
        bos = [self.bos_id] if add_bos and self.bos_id >= 0 else []
        ids: List[int] = []
        plain = bytearray()  # text since the last special token
        self._special_pattern()  # fills _special_ids
        for text, control in pieces:
            data = text.encode("utf-8", "surrogatepass")
            start = 0
            pattern, found = (self._special_pattern(), self._special_ids) if control else \
                (self._user_defined_pattern(), self._user_ids)
            for m in pattern.finditer(data):
                plain += data[start:m.start()]
                if plain:
                    ids += self._encode(bytes(plain), False)
                    plain.clear()
                ids.append(found[m.group()])
                start = m.end()
            plain += data[start:]
        if plain:
            ids += self._encode(bytes(plain), False)
        if bos and ids[:1] == bos:
            bos = []
        return bos + ids

    def lookup(self, text: str) -> int:
        data = text.encode("utf-8")
        return int(lib.ts_token_lookup(self._ptr, data, len(data)))

    def token_text(self, token: int) -> str:
        p = lib.ts_token_text(self._ptr, token)
        return ffi.string(p).decode("utf-8", "replace") if p != ffi.NULL else ""

    def is_eog(self, token: int) -> bool:
        return bool(lib.ts_token_is_eog(self._ptr, token))

    # ---- ids -> text -------------------------------------------------------------------
    def detokenize(self, ids: Sequence[int], render_special: bool) -> str:
        arr = ffi.new("int32_t[]", list(ids))
        size = max(64, 8 * len(ids))
        while True:
            out = ffi.new("char[]", size)
            n = lib.ts_detokenize(self._ptr, arr, len(ids), render_special, out, size)
            if n == _TOKENIZE_ERROR:
                raise TokenizeError("cannot detokenize: a token id is outside the vocabulary")
            if n >= 0:
                return ffi.unpack(out, n).decode("utf-8", "replace")
            size = -n

    def stream(self, at_text_start: bool) -> "TextStream":
        return TextStream(self, at_text_start)


class TextStream:
    """Turns generated ids into text, one complete UTF-8 character at a time."""

    def __init__(self, tok: Tokenizer, at_text_start: bool) -> None:
        self._tok = tok
        self._state = ffi.new("struct ts_utf8_stream *")
        self._buf = ffi.new("char[]", tok._stream_buf_size)
        lib.ts_utf8_stream_init(self._state, tok._ptr, at_text_start, False)

    def push(self, token: int) -> str:
        n = lib.ts_utf8_stream_push(self._state, self._tok._ptr, token, self._buf, len(self._buf))
        if n < 0:  # cannot happen with the documented buffer size
            raise TokenizeError(f"text of token {token} does not fit the stream buffer")
        return ffi.unpack(self._buf, n).decode("utf-8", "replace")

    def flush(self) -> str:
        n = lib.ts_utf8_stream_flush(self._state, self._buf, len(self._buf))
        return ffi.unpack(self._buf, max(n, 0)).decode("utf-8", "replace")

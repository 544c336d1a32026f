"""turbosparse.Model: loads a GGUF model and generates text from it.

    import turbosparse
    with turbosparse.Model("model.gguf", n_ctx=2048) as model:
        print(model.generate("The capital of France is", max_tokens=32, temperature=0))
        for piece in model.chat([{"role": "user", "content": "Hi!"}], stream=True):
            print(piece, end="", flush=True)

Threads: a Model may be shared between threads. Each Model has a lock that serializes its
native calls (one decode at a time; other threads wait). Each generation keeps its own tokens
and sampler, and the context is re-synchronised with them at every step, so interleaved
generations (two threads, or two streams consumed in turns) give exactly the text each would
give alone; interleaving only costs re-evaluating prompts. For parallel speed use one Model per
thread. The GIL is released while the native code computes.

Ctrl-C: generation decodes one token per native call and checks for KeyboardInterrupt between
them; a prompt evaluated on the main thread runs in a helper thread so that Ctrl-C aborts it
mid-way (ts_context_abort). Either way KeyboardInterrupt propagates and the model stays usable.
"""
from __future__ import annotations

import atexit
import math
import os
import random
import signal
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Literal, Optional, Sequence, Set, Union, overload

import numpy as np

from . import chat as chat_mod
from ._closeable import Closeable
from ._gguf_meta import MetaValue, read_metadata
from ._lib import load
from ._sampling import Sampler, SamplingParams, StopFilter, check_seed, stop_list
from ._tokenizer import Tokenizer, token_ids
from .errors import (ContextError, ContextFullError, DecodeError, ModelClosedError, ModelLoadError,
                     NoDefaultModelError, TemplateError, TokenizeError)

if TYPE_CHECKING:
    from .batch import Batch, SequenceHandle

ffi, lib = load()

FFN_MODES: Dict[str, int] = {"auto": -1, "dense": 0, "predicted": 1, "exact": 2, "threshold": 3}
_MODE_NAMES = {v: k for k, v in FFN_MODES.items()}
_TS_ERR_CONTEXT_FULL, _TS_ERR_ABORTED = -2, -4
_MODELS_DIR = Path(__file__).resolve().parent / "models"

PathLike = Union[str, "os.PathLike[str]"]
Prompt = Union[str, Sequence[int]]


def default_model_path() -> Path:
    """The bundled default model: turbosparse/models/default.gguf, or the only .gguf there."""
    found = sorted(_MODELS_DIR.glob("*.gguf")) if _MODELS_DIR.is_dir() else []
    preferred = _MODELS_DIR / "default.gguf"
    if preferred in found:
        return preferred
    if len(found) == 1:
        return found[0]
    if not found:
        raise NoDefaultModelError(
            f"no bundled default model is installed ({_MODELS_DIR} holds no .gguf file): "
            "pass the path of a GGUF model, e.g. turbosparse.Model('model.gguf')")
    raise NoDefaultModelError(f"{_MODELS_DIR} holds several models ({', '.join(p.name for p in found)}) and "
                              "no default.gguf: pass the path of the one to load")


# Models still open at exit are closed before the interpreter tears modules down: otherwise
# cffi may dlclose ggml while a context's thread-pool threads still run its code (a crash).
_open_models: "weakref.WeakSet[Model]" = weakref.WeakSet()
ACT_HIST_BINS = 32768  # GGML_SPARSE_ACT_HIST_BINS


def act_hist_edge(bin_: int) -> float:
    """The smallest |silu(gate)| of histogram bin bin_ (ACT_HIST_BINS: +inf)."""
    return float(lib.ts_act_hist_edge(int(bin_)))


class _LayerCounts:
    """Threshold mode's per-layer neuron counts (and histograms) kept across KV resets."""

    def __init__(self, computed: np.ndarray, total: np.ndarray, hist: Optional[np.ndarray]) -> None:
        self.computed, self.total, self.hist = computed, total, hist

    @classmethod
    def zeros(cls, n_layer: int, with_hist: bool) -> "_LayerCounts":
        return cls(np.zeros(n_layer, np.int64), np.zeros(n_layer, np.int64),
                   np.zeros((n_layer, ACT_HIST_BINS), np.int64) if with_hist else None)

    def add(self, other: "_LayerCounts") -> None:
        self.computed += other.computed
        self.total += other.total
        if self.hist is not None and other.hist is not None:
            self.hist += other.hist



@atexit.register
def _close_open_models() -> None:
    for m in list(_open_models):
        try:
            m.close()
        except Exception:
            pass


@dataclass(frozen=True)
class Stats:
    """Counters since the model was loaded or reset(). A decode of several tokens counts as
    prompt processing, one of a single token as generation."""

    n_prompt_tokens: int
    prompt_ms: float
    n_gen_tokens: int
    gen_ms: float
    ffn_neurons_computed: int
    ffn_neurons_total: int
    load_ms: float

    @property
    def prompt_tokens_per_s(self) -> float:
        return 1000.0 * self.n_prompt_tokens / self.prompt_ms if self.prompt_ms > 0 else 0.0

    @property
    def gen_tokens_per_s(self) -> float:
        return 1000.0 * self.n_gen_tokens / self.gen_ms if self.gen_ms > 0 else 0.0

    @property
    def ffn_density(self) -> float:
        """Share of FFN neurons computed (1.0 when nothing sparse ran)."""
        return self.ffn_neurons_computed / self.ffn_neurons_total if self.ffn_neurons_total > 0 else 1.0

    def __add__(self, other: "Stats") -> "Stats":
        return Stats(self.n_prompt_tokens + other.n_prompt_tokens, self.prompt_ms + other.prompt_ms,
                     self.n_gen_tokens + other.n_gen_tokens, self.gen_ms + other.gen_ms,
                     self.ffn_neurons_computed + other.ffn_neurons_computed,
                     self.ffn_neurons_total + other.ffn_neurons_total, max(self.load_ms, other.load_ms))


_NO_STATS = Stats(0, 0.0, 0, 0.0, 0, 0, 0.0)


class Generation:
    """What one generation did, filled in as it runs (openai_compat reads it for `usage`)."""

    def __init__(self, prompt_tokens: List[int]) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens: List[int] = []
        self.finish_reason: Optional[str] = None  # "stop" (end of text or a stop string) or "length"


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 < value <= 2**31 - 1:
        raise ValueError(f"{name} must be a positive int below 2**31 (got {value})")
    return value


class Model(Closeable):
    """A GGUF model with its inference context (KV cache) and tokenizer.

    Args:
        path: the GGUF file; None loads the bundled default model (turbosparse/models/).
        n_ctx: context size in tokens (None: the model's training context, at most 4096).
        n_threads: compute threads (None: the online CPUs).
        ffn_mode: "auto" (predicted when the file has predictors, else exact for ReGLU/dReLU,
            else threshold for a SwiGLU file calibrated by ts-calibrate-sparsity, else dense),
            "predicted", "exact", "threshold" or "dense".
        threshold: the predictor's logit threshold (None: the file's).
        seed: seeds the sampling of every generation that is not given its own seed, so a
            program rerun gives the same text; None draws fresh randomness.
        use_mmap: keep the weights in the memory-mapped file (False reads them into RAM).
        act_thresholds: threshold mode: one cut on |silu(gate)| per layer instead of the
            file's (set_act_thresholds() changes them later).
        collect_act_hist: threshold mode: keep per-layer histograms of |silu(gate)|
            (act_histograms(); for calibration); a file without thresholds then runs with
            -inf thresholds (every neuron) until set_act_thresholds().
        n_seq_max: sequences the context holds at once (they share its n_ctx KV cells); more
            than one is for batched decoding of several sequences (turbosparse.batch).

    Raises:
        ModelLoadError: the file is missing or bad (the message is the C loader's).
        ContextError: the context cannot be made (e.g. "predicted" without predictors).
    """

    def __init__(self, path: Optional[PathLike] = None, *, n_ctx: Optional[int] = None,
                 n_threads: Optional[int] = None, ffn_mode: str = "auto", threshold: Optional[float] = None,
                 seed: Optional[int] = None, use_mmap: bool = True, collect_act_hist: bool = False,
                 act_thresholds: Optional[Sequence[float]] = None, n_seq_max: int = 1) -> None:
        self._model: Any = None
        self._ctx: Any = None
        self._tok: Optional[Tokenizer] = None
        self._lock = threading.RLock()
        self._closing = False  # close() has begun: an aborted decode means "closed"
        if path is None:
            path = default_model_path()
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        self.path: str = os.fspath(path)
        if "\0" in self.path:
            raise ValueError("path contains a NUL character")
        if not isinstance(ffn_mode, str) or ffn_mode not in FFN_MODES:
            raise ValueError(f"ffn_mode must be one of {', '.join(FFN_MODES)} (got {ffn_mode!r})")
        cp = ffi.new("struct ts_context_params *")
        lib.ts_context_params_init(cp)
        cp.n_ctx = 0 if n_ctx is None else _positive_int("n_ctx", n_ctx)
        cp.n_threads = 0 if n_threads is None else _positive_int("n_threads", n_threads)
        cp.ffn_mode = FFN_MODES[ffn_mode]
        cp.n_seq_max = _positive_int("n_seq_max", n_seq_max)
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                raise TypeError(f"threshold must be a float, not {type(threshold).__name__}")
            if not math.isfinite(threshold):
                raise ValueError(f"threshold must be finite (got {threshold})")
            cp.use_threshold, cp.threshold = 1, float(threshold)
        cp.collect_act_hist = 1 if collect_act_hist else 0
        cuts = ffi.new("float[]", [float(t) for t in act_thresholds]) if act_thresholds is not None else ffi.NULL
        cp.act_thresholds = cuts  # copied by ts_context_new
        n_cuts = len(act_thresholds) if act_thresholds is not None else None
        self._seed_rng = random.Random(check_seed(seed)) if seed is not None else random.SystemRandom()

        mp = ffi.new("struct ts_model_params *")
        lib.ts_model_params_init(mp)
        mp.use_mmap = 1 if use_mmap else 0
        err = ffi.new("char[]", 1024)
        model = lib.ts_model_load(os.fsencode(self.path), mp, err, 1024)
        if model == ffi.NULL:
            raise ModelLoadError(ffi.string(err).decode("utf-8", "replace") or f"{self.path}: cannot load")
        self._model = model
        if n_cuts is not None and n_cuts != self._c_n_layer():
            n_layer = self._c_n_layer()
            self.close()
            raise ValueError(f"act_thresholds: {n_cuts} values for {n_layer} layers")
        ctx = lib.ts_context_new(model, cp, err, 1024)
        if ctx == ffi.NULL:
            self.close()
            raise ContextError(ffi.string(err).decode("utf-8", "replace") or "cannot create the context")
        self._ctx = ctx
        self._layers = _LayerCounts.zeros(int(self._c_n_layer()), bool(collect_act_hist))
        _open_models.add(self)
        meta = ffi.new("struct ts_model_meta *")
        lib.ts_model_get_meta(model, meta)
        self._meta = meta
        self.n_vocab: int = int(meta.n_vocab)
        try:
            self._tok = Tokenizer(lib.ts_model_gguf(model))
            self._tok_error = ""
        except TokenizeError as e:  # a file without a vocabulary still runs token ids
            self._tok_error = str(e)
        try:
            self._metadata, self._array_keys = read_metadata(self.path)
        except (OSError, ValueError) as e:  # the file changed after the C loader read it
            self.close()
            raise ModelLoadError(f"{self.path}: cannot read the metadata: {e}") from None
        self._kv_tokens: List[int] = []  # what the KV cache holds (when _kv_valid)
        self._kv_logits: Optional[np.ndarray] = None  # logits after its last token
        self._kv_valid = True
        self._stats_base = _NO_STATS

    # ---- life cycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Frees the native model and context. Safe to call twice; a generation still running
        in another thread is aborted and then fails with ModelClosedError."""
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            self._closing = True
            lib.ts_context_abort(ctx)
        with self._lock:
            if self._tok is not None:
                self._tok.close()
                self._tok = None
            if self._ctx is not None:
                lib.ts_context_free(self._ctx)
                self._ctx = None
            if self._model is not None:
                lib.ts_model_free(self._model)
                self._model = None

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def __enter__(self) -> "Model":
        self._check_open()
        return self

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"n_ctx={self.n_ctx}, ffn_mode={self.ffn_mode!r}"
        return f"Model({self.path!r}, {state})"

    def _check_open(self) -> None:
        if self._ctx is None:
            raise ModelClosedError("this Model is closed")

    def _tokenizer(self) -> Tokenizer:
        self._check_open()
        if self._tok is None:
            raise TokenizeError(f"{self.path} has no usable tokenizer: {self._tok_error}")
        return self._tok

    # ---- properties ---------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        """The context size in tokens."""
        with self._lock:
            self._check_open()
            return int(lib.ts_context_n_ctx(self._ctx))

    @property
    def n_threads(self) -> int:
        with self._lock:
            self._check_open()
            return int(lib.ts_context_n_threads(self._ctx))

    @property
    def ffn_mode(self) -> str:
        """The FFN mode in use: "dense", "predicted", "exact" or "threshold" (never "auto")."""
        with self._lock:
            self._check_open()
            return _MODE_NAMES[int(lib.ts_context_ffn_mode(self._ctx))]

    @property
    def threshold(self) -> float:
        """The predictor logit threshold in use."""
        with self._lock:
            self._check_open()
            return float(lib.ts_context_threshold(self._ctx))

    @property
    def metadata(self) -> Dict[str, MetaValue]:
        """The GGUF file's scalar and string keys (arrays such as the vocabulary are left out)."""
        self._check_open()
        return dict(self._metadata)

    @property
    def chat_template(self) -> Optional[str]:
        """The file's Jinja chat template, None when it has none (chat() then uses ChatML)."""
        t = self._metadata.get("tokenizer.chat_template")
        return t if isinstance(t, str) else None

    @property
    def info(self) -> Dict[str, Any]:
        """What the runtime read from the file: sizes, FFN kind, predictor, load time, ..."""
        self._check_open()
        m = self._meta
        out: Dict[str, Any] = {}
        for name, _ in ffi.typeof("struct ts_model_meta").fields:
            v = getattr(m, name)
            out[name] = ffi.string(v).decode("utf-8", "replace") if isinstance(v, ffi.CData) else v
        return out

    def token_bos(self) -> int:
        """The BOS id (-1 when the vocabulary has none)."""
        return self._tokenizer().bos_id

    def token_eos(self) -> int:
        """The EOS id (-1 when the vocabulary has none)."""
        return self._tokenizer().eos_id

    def token_eot(self) -> int:
        """The end-of-turn id (-1 when the model has none besides EOS)."""
        return self._tokenizer().eot_id

    @property
    def stats(self) -> Stats:
        """Token counts, times and FFN density since load or reset()."""
        with self._lock:
            self._check_open()
            return self._stats_base + self._c_stats()

    def _c_stats(self) -> Stats:
        s = ffi.new("struct ts_stats *")
        lib.ts_context_get_stats(self._ctx, s)
        return Stats(int(s.n_prompt_tokens), float(s.prompt_ms), int(s.n_gen_tokens), float(s.gen_ms),
                     int(s.ffn_neurons_computed), int(s.ffn_neurons_total), float(s.load_ms))

    # ---- tokens -------------------------------------------------------------------------
    def tokenize(self, text: Union[str, bytes], add_bos: Optional[bool] = None, special: bool = False) -> List[int]:
        """Token ids of text. add_bos None follows the file (tokenizer.ggml.add_bos_token).
        special=True turns the texts of control tokens (e.g. "<|im_start|>") into those
        tokens, as llama.cpp does; otherwise all text is plain text."""
        with self._lock:
            tok = self._tokenizer()
            return tok.tokenize(text, tok.add_bos if add_bos is None else bool(add_bos), bool(special))

    def detokenize(self, ids: Sequence[int], render_special: bool = False) -> str:
        """The text of ids (the dummy-prefix space of the first one dropped, as SentencePiece)."""
        with self._lock:
            tok = self._tokenizer()
            return tok.detokenize(token_ids(ids, self.n_vocab), bool(render_special))

    def token_to_piece(self, token: int, render_special: bool = True) -> str:
        """The stored text of one token (e.g. "▁the", "<0x0A>", "<|im_end|>")."""
        with self._lock:
            tok = self._tokenizer()
            (t,) = token_ids([token], self.n_vocab)
            return tok.token_text(t)

    # ---- evaluation ---------------------------------------------------------------------
    def eval(self, ids: Sequence[int]) -> np.ndarray:
        """Logits of every position, shape [len(ids), n_vocab], evaluating ids from an empty
        context (the KV cache then holds ids)."""
        toks = token_ids(ids, self.n_vocab)
        if not toks:
            raise ValueError("eval needs at least one token")
        with self._lock:
            self._check_open()
            self._check_fits(len(toks))
            self._reset_kv()
            out = self._decode(toks, logits_all=True)
            self._kv_tokens, self._kv_logits = toks, out[-1]
            return out

    # ---- several sequences (turbosparse.batch) -------------------------------------------
    @property
    def n_seq_max(self) -> int:
        """Sequences the context holds at once (Model(n_seq_max=...))."""
        with self._lock:
            self._check_open()
            return int(lib.ts_context_n_seq_max(self._ctx))

    def decode_batch(self, batch: "Batch") -> np.ndarray:
        """Decodes a turbosparse.batch.Batch (entries of one or several sequences) in one graph
        and adds its entries to the KV cache; returns the wanted entries' logits, shape
        [n_wanted, n_vocab], in entry order. Raises ContextFullError when the cache has too
        few free cells and DecodeError for a bad entry (sequence id, a position that does not
        continue its sequence, token); the cache is then left as it was. The single-sequence
        calls (generate, chat, eval) use sequence 0: do not mix them with batches that do."""
        tokens, pos, seq, want = batch.arrays()
        n = len(tokens)
        n_out = int(sum(want)) if n else 0
        out = np.empty((n_out, self.n_vocab), dtype=np.float32)
        with self._lock:
            self._check_open()
            self._kv_valid = False  # sequence 0's cells may change: the next generate() starts afresh
            b = ffi.new("struct ts_batch *")
            keep = [ffi.new("int32_t[]", tokens), ffi.new("int32_t[]", pos), ffi.new("int32_t[]", seq),
                    ffi.new("int8_t[]", want)]
            b.n_tokens, b.tokens, b.pos, b.seq, b.logits = n, keep[0], keep[1], keep[2], keep[3]
            buf = ffi.from_buffer(out, require_writable=True)
            rc = lib.ts_decode_batch(self._ctx, b, ffi.cast("float *", buf) if n_out else ffi.NULL)
            self._raise_for(rc)
        return out

    def remove_sequence(self, seq: int) -> None:
        """Frees sequence seq's KV cells; it starts again at position 0."""
        with self._lock:
            self._check_open()
            if seq == 0:
                self._kv_valid = False
            self._raise_for(lib.ts_seq_remove(self._ctx, int(seq)))

    def sequence_length(self, seq: int) -> int:
        """The position sequence seq's next token takes (its length in the cache)."""
        with self._lock:
            self._check_open()
            n = int(lib.ts_seq_n_past(self._ctx, int(seq)))
            if n < 0:
                raise ValueError(f"sequence id {seq} is out of range (0..{self.n_seq_max - 1})")
            return n

    @property
    def last_step(self) -> Dict[str, float]:
        """The last decode: its tokens, milliseconds, FFN density (mean share of neurons per
        token) and union density (weight rows read over the rows of the FFNs: below the
        density times the tokens when the batch's tokens share rows)."""
        with self._lock:
            self._check_open()
            s = ffi.new("struct ts_stats *")
            lib.ts_context_get_stats(self._ctx, s)
            return {"n_tokens": int(s.last_n_tokens), "ms": float(s.last_ms), "ffn_density": float(s.last_ffn_density),
                    "ffn_union_density": float(s.last_ffn_union_density)}

    def _raise_for(self, rc: int) -> None:
        if rc == 0:
            return
        msg = ffi.string(lib.ts_context_error(self._ctx)).decode("utf-8", "replace")
        if rc == _TS_ERR_CONTEXT_FULL:
            raise ContextFullError(msg)
        if rc == _TS_ERR_ABORTED and self._closing:
            raise ModelClosedError("the Model was closed during the computation")
        raise DecodeError(msg or f"decode failed (status {rc})")

    def reset(self) -> None:
        """Empties the KV cache and the statistics."""
        with self._lock:
            self._check_open()
            lib.ts_context_reset(self._ctx)
            self._kv_tokens, self._kv_logits, self._kv_valid = [], None, True
            self._stats_base = _NO_STATS
            self._layers = _LayerCounts.zeros(self._layers.computed.shape[0], self._layers.hist is not None)

    # ---- threshold mode (SwiGLU, CATS) ------------------------------------------------------
    def _c_n_layer(self) -> int:
        meta = ffi.new("struct ts_model_meta *")
        lib.ts_model_get_meta(self._model, meta)
        return int(meta.n_layer)

    def _c_layer_counts(self) -> "_LayerCounts":
        n = self._layers.computed.shape[0]
        out = _LayerCounts.zeros(n, self._layers.hist is not None)
        if int(lib.ts_context_ffn_mode(self._ctx)) != FFN_MODES["threshold"]:
            return out
        c, t = ffi.new("int64_t *"), ffi.new("int64_t *")
        for il in range(n):
            lib.ts_context_layer_stats(self._ctx, il, c, t)
            out.computed[il], out.total[il] = c[0], t[0]
            if out.hist is not None:
                row = out.hist[il]
                lib.ts_context_act_hist(self._ctx, il, ffi.cast("int64_t *", ffi.from_buffer(row)), row.shape[0])
        return out

    @property
    def act_thresholds(self) -> List[float]:
        """Threshold mode: the per-layer cuts on |silu(gate)| in use."""
        with self._lock:
            self._check_open()
            n = self._layers.computed.shape[0]
            buf = ffi.new("float[]", n)
            if lib.ts_context_get_act_thresholds(self._ctx, buf, n) != 0:
                raise ContextError(f"activation thresholds apply to ffn_mode 'threshold' only (mode is {self.ffn_mode!r})")
            return [float(buf[i]) for i in range(n)]

    def set_act_thresholds(self, values: Sequence[float]) -> None:
        """Threshold mode: sets the per-layer cuts on |silu(gate)| (one per layer; -inf computes
        every neuron), from the next evaluation on."""
        vals = [float(v) for v in values]
        with self._lock:
            self._check_open()
            if lib.ts_context_set_act_thresholds(self._ctx, ffi.new("float[]", vals), len(vals)) != 0:
                raise ContextError(ffi.string(lib.ts_context_error(self._ctx)).decode("utf-8", "replace"))

    def layer_density(self) -> List[float]:
        """Threshold mode: the share of FFN neurons computed per layer since load or reset()
        (nan for a layer that has run no token)."""
        with self._lock:
            self._check_open()
            cur = self._c_layer_counts()
            c = self._layers.computed + cur.computed
            t = self._layers.total + cur.total
            return [float(c[i] / t[i]) if t[i] else float("nan") for i in range(len(t))]

    def act_histograms(self) -> np.ndarray:
        """collect_act_hist: int64 [n_layer, 32768] counts of |silu(gate)| since load or reset();
        bin b holds the values v with act_hist_edge(b) <= |v| < act_hist_edge(b + 1)."""
        with self._lock:
            self._check_open()
            if self._layers.hist is None:
                raise ContextError("act_histograms() needs Model(..., ffn_mode='threshold', collect_act_hist=True)")
            cur = self._c_layer_counts()
            assert cur.hist is not None
            return self._layers.hist + cur.hist

    def _check_fits(self, n: int, n_ctx: Optional[int] = None) -> None:
        if n_ctx is None:
            n_ctx = int(lib.ts_context_n_ctx(self._ctx))
        if n > n_ctx:
            raise ContextFullError(f"{n} tokens do not fit the context of {n_ctx} tokens "
                                   "(make the Model with a larger n_ctx, or shorten the prompt)")

    def _reset_kv(self) -> None:
        """Empties sequence 0's cells (the whole KV cache, keeping its statistics in _stats_base,
        when the context holds one sequence; other sequences' cells are left alone)."""
        if int(lib.ts_context_n_seq_max(self._ctx)) > 1:
            lib.ts_seq_remove(self._ctx, 0)
        else:
            self._stats_base = self._stats_base + self._c_stats()
            self._layers.add(self._c_layer_counts())
            lib.ts_context_reset(self._ctx)
        self._kv_tokens, self._kv_logits, self._kv_valid = [], None, True

    def _decode(self, toks: List[int], logits_all: bool) -> np.ndarray:
        """Appends toks to the KV cache; logits of every position or of the last one."""
        n = len(toks)
        arr = ffi.new("int32_t[]", toks)
        out = np.empty((n if logits_all else 1, self.n_vocab), dtype=np.float32)
        buf = ffi.from_buffer(out, require_writable=True)  # keeps `out` pinned while C writes
        ptr = ffi.cast("float *", buf)
        if n > 1 and threading.current_thread() is threading.main_thread() and callable(signal.getsignal(signal.SIGINT)):
            rc = self._decode_interruptible(arr, n, ptr, logits_all)
        else:
            rc = lib.ts_decode(self._ctx, arr, n, ptr, 1 if logits_all else 0)
        if rc != 0:
            msg = ffi.string(lib.ts_context_error(self._ctx)).decode("utf-8", "replace")
            if rc == _TS_ERR_CONTEXT_FULL:
                raise ContextFullError(msg)
            if rc == _TS_ERR_ABORTED and self._closing:
                raise ModelClosedError("the Model was closed during the computation")
            raise DecodeError(msg or f"decode failed (status {rc})")
        return out if logits_all else out[0]

    def _decode_interruptible(self, arr: Any, n: int, ptr: Any, logits_all: bool) -> int:
        """ts_decode in a helper thread while this (main) thread waits, so that Ctrl-C can set
        the context's abort flag instead of waiting for a long prompt to finish.

        While it runs, SIGINT only sets the abort flag (a temporary handler): an exception
        raised in the middle of starting or joining the helper could leave it writing into
        buffers that Python has freed. The interrupt is raised once the helper is done."""
        while True:
            result: List[int] = []
            interrupted: List[Any] = []

            def on_sigint(signum: int, frame: Any) -> None:
                # the decode may end before it sees the flag, leaving it set for the next one
                # (and the KV cache may hold the batch): the next use starts with a reset,
                # which clears both. Marked here, not after the join, because a second signal
                # can raise KeyboardInterrupt anywhere once the default handler is back.
                self._kv_valid = False
                interrupted.append(frame)
                lib.ts_context_abort(self._ctx)

            def work() -> None:
                result.append(lib.ts_decode(self._ctx, arr, n, ptr, 1 if logits_all else 0))

            old = signal.signal(signal.SIGINT, on_sigint)
            try:
                worker = threading.Thread(target=work, name="turbosparse-decode", daemon=True)
                worker.start()
                worker.join()
            finally:
                signal.signal(signal.SIGINT, old)
            rc = result[0] if result else _TS_ERR_ABORTED
            if not interrupted:
                return rc
            if old is signal.default_int_handler:
                raise KeyboardInterrupt
            old(signal.SIGINT, interrupted[0])  # the program's own handler decides
            if rc != _TS_ERR_ABORTED:
                return rc
            # the handler did not raise: the program wants to go on, so decode again

    def _sync(self, toks: List[int]) -> np.ndarray:
        """Makes the KV cache hold exactly toks (decoding only what it lacks); returns the
        logits after the last token."""
        have = self._kv_tokens
        valid = self._kv_valid and int(lib.ts_context_n_past(self._ctx)) == len(have)
        if valid and have == toks and self._kv_logits is not None:
            return self._kv_logits
        if not (valid and len(have) < len(toks) and toks[:len(have)] == have):
            self._reset_kv()
            have = []
        self._check_fits(len(toks))
        logits = self._decode(toks[len(have):], logits_all=False)
        self._kv_tokens, self._kv_logits = list(toks), logits
        return logits

    # ---- generation ---------------------------------------------------------------------
    def _prompt_tokens(self, prompt: Prompt, add_bos: Optional[bool]) -> List[int]:
        if isinstance(prompt, (str, bytes)):
            tok = self._tokenizer()
            ids = tok.tokenize(prompt, tok.add_bos if add_bos is None else bool(add_bos), True)
        elif isinstance(prompt, Sequence) or isinstance(prompt, np.ndarray):
            ids = token_ids(prompt, self.n_vocab, "prompt token")
        else:
            raise TypeError(f"prompt must be a str or a sequence of token ids, not {type(prompt).__name__}")
        if not ids:
            raise ValueError("the prompt is empty and the model adds no BOS token: nothing to start from")
        return ids

    def _sampling(self, temperature: float, top_k: int, top_p: float, min_p: float, repeat_penalty: float,
                  repeat_last_n: int, seed: Optional[int]) -> tuple:
        params = SamplingParams.checked(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n)
        return params, (check_seed(seed) if seed is not None else self._seed_rng.getrandbits(64))

    def _locked_sync(self, toks: List[int]) -> np.ndarray:
        with self._lock:
            self._check_open()
            return self._sync(toks)

    def _run(self, prompt: List[int], max_tokens: Optional[int], params: SamplingParams, seed: int,
             stops: List[str], at_text_start: bool, gen: Generation,
             stop_ids: Set[int] = frozenset(),  # type: ignore[assignment]
             sequence: Optional["SequenceHandle"] = None) -> Iterator[str]:
        """The generation loop: one decode per token, the lock held only inside a step. With a
        sequence (turbosparse.batch), its scheduler decodes the tokens, batched with the other
        sequences' (the lock is then not held while waiting for it)."""
        limit = math.inf if max_tokens is None or max_tokens < 0 else max_tokens
        sync = sequence.sync if sequence is not None else self._locked_sync
        sampler = Sampler(params, seed)
        filt = StopFilter(stops)
        try:
            with self._lock:
                tok = self._tokenizer()
                n_ctx = sequence.n_ctx if sequence is not None else int(lib.ts_context_n_ctx(self._ctx))
                self._check_fits(len(prompt), n_ctx)
                stream = tok.stream(at_text_start)
            logits = sync(prompt)
            if params.repeat_last_n > 0:
                for t in prompt[-params.repeat_last_n:]:
                    sampler.accept(t)
            tokens = list(prompt)
            while True:
                if len(gen.completion_tokens) >= limit:
                    gen.finish_reason = "length"
                    break
                with self._lock:
                    self._check_open()
                    t = sampler.sample(logits)
                    if tok.is_eog(t) or t in stop_ids:
                        gen.finish_reason = "stop"
                        break
                    sampler.accept(t)
                    tokens.append(t)
                    gen.completion_tokens.append(t)
                    text = filt.feed(stream.push(t))
                if text:
                    yield text  # before the next decode: a stream's reader gets each piece a step sooner
                if filt.stopped:
                    gen.finish_reason = "stop"
                    break
                if len(tokens) >= n_ctx:
                    gen.finish_reason = "length"
                    break
                if len(gen.completion_tokens) < limit:
                    logits = sync(tokens)
            if not filt.stopped:
                with self._lock:
                    self._check_open()
                    rest = filt.feed(stream.flush())
                if filt.stopped:  # a stop string completed by the last bytes
                    gen.finish_reason = "stop"
                else:
                    rest += filt.flush()
                if rest:
                    yield rest
        finally:
            sampler.close()

    @overload
    def generate(self, prompt: Prompt, max_tokens: Optional[int] = ..., temperature: float = ...,
                 top_k: int = ..., top_p: float = ..., min_p: float = ..., repeat_penalty: float = ...,
                 stop: Union[None, str, Sequence[str]] = ..., *, stream: Literal[False] = ...,
                 seed: Optional[int] = ..., repeat_last_n: int = ..., add_bos: Optional[bool] = ...) -> str: ...

    @overload
    def generate(self, prompt: Prompt, max_tokens: Optional[int] = ..., temperature: float = ...,
                 top_k: int = ..., top_p: float = ..., min_p: float = ..., repeat_penalty: float = ...,
                 stop: Union[None, str, Sequence[str]] = ..., *, stream: Literal[True],
                 seed: Optional[int] = ..., repeat_last_n: int = ..., add_bos: Optional[bool] = ...) -> Iterator[str]: ...

    def generate(self, prompt: Prompt, max_tokens: Optional[int] = 128, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 stop: Union[None, str, Sequence[str]] = None, *, stream: bool = False,
                 seed: Optional[int] = None, repeat_last_n: int = 64,
                 add_bos: Optional[bool] = None) -> Union[str, Iterator[str]]:
        """Continues prompt (text, or token ids) and returns the generated text, or with
        stream=True an iterator of text pieces as they are generated.

        Generation ends at the end-of-text token, at the first of the `stop` strings (which is
        not included in the text), after max_tokens tokens (None or -1: no limit), or when
        the context is full. temperature 0 is greedy; top_k 0, top_p 1, min_p 0 and
        repeat_penalty 1 switch those off. seed makes the sampling reproducible. Control-token
        texts in a str prompt (e.g. "<|im_start|>") become those tokens.
        """
        prompt_ids, max_tokens, params, seed_v, stops = self._prepare(
            prompt, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, stop, seed, add_bos)
        it = self._run(prompt_ids, max_tokens, params, seed_v, stops, False, Generation(prompt_ids))
        return it if stream else "".join(it)

    def _prepare(self, prompt: Prompt, max_tokens: Optional[int], temperature: float, top_k: int, top_p: float,
                 min_p: float, repeat_penalty: float, repeat_last_n: int, stop: Any, seed: Optional[int],
                 add_bos: Optional[bool]) -> tuple:
        """Checks every argument up front, so a bad one raises at the call, not at the first
        piece of a stream."""
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
            raise TypeError(f"max_tokens must be an int or None, not {type(max_tokens).__name__}")
        params, seed_v = self._sampling(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        stops = stop_list(stop)
        with self._lock:
            self._check_open()
            ids = self._prompt_tokens(prompt, add_bos)
            self._check_fits(len(ids))
        return ids, max_tokens, params, seed_v, stops

    def render_chat(self, messages: Sequence[chat_mod.Message], add_generation_prompt: bool = True,
                    **variables: Any) -> str:
        """The prompt text chat() would use: the file's chat template (ChatML when it has
        none) applied to messages. chat() does not tokenize this text as a whole: see
        tokenize_chat."""
        tok = self._tokenizer()
        bos = tok.token_text(tok.bos_id) if tok.bos_id >= 0 else ""
        eos = tok.token_text(tok.eos_id) if tok.eos_id >= 0 else ""
        return chat_mod.render_chat(self.chat_template, messages, add_generation_prompt, bos, eos, **variables)

    def tokenize_chat(self, messages: Sequence[chat_mod.Message], add_generation_prompt: bool = True,
                      **variables: Any) -> List[int]:
        """The prompt ids chat() decodes: render_chat's text, where only the template's own
        text has its control tokens' texts (e.g. "<|im_start|>", "</s>") turned into those
        tokens; in each message's content they are plain text, so a message holding
        "<|im_end|>" cannot end its turn or forge another (as ts-main --chat). User-defined
        tokens (added vocabulary, not markers) are matched everywhere, as llama.cpp does.
        Without control tokens' texts in the contents the ids are
        tokenize(render_chat(...), special=True).

        A template that changes the content beyond stripping it (see chat.render_chat_pieces)
        cannot be cut into template and content: then the rendered text is tokenized as a whole
        if that yields exactly the control tokens the template gives without the contents, and
        TemplateError is raised otherwise (a content would have become control tokens)."""
        with self._lock:
            tok = self._tokenizer()
            bos = tok.token_text(tok.bos_id) if tok.bos_id >= 0 else ""
            eos = tok.token_text(tok.eos_id) if tok.eos_id >= 0 else ""
            r = chat_mod.render_chat_pieces(self.chat_template, messages, add_generation_prompt, bos, eos,
                                            **variables)
            if r.pieces is not None:
                return tok.tokenize_pieces(r.pieces, tok.add_bos)
            ids = tok.tokenize(r.text, tok.add_bos, True)
            masked = tok.tokenize(r.masked_text, tok.add_bos, True)
            if [i for i in ids if tok.is_control(i)] != [i for i in masked if tok.is_control(i)]:
                raise TemplateError(
                    "the chat template changes the messages' content (beyond strip/trim), so it cannot be "
                    "tokenized apart from the template's markers, and with it the prompt holds control tokens "
                    "the template alone does not give (a message contains a control token's text, e.g. "
                    "'<|im_end|>'): refusing to turn message text into control tokens")
            return ids

    def _chat_run(self, messages: Sequence[chat_mod.Message], max_tokens: Optional[int], temperature: float,
                  top_k: int, top_p: float, min_p: float, repeat_penalty: float, stop: Any, seed: Optional[int],
                  repeat_last_n: int, variables: Dict[str, Any],
                  sequence: Optional["SequenceHandle"] = None) -> tuple:
        ids = self.tokenize_chat(messages, True, **variables)
        prompt_ids, max_tokens, params, seed_v, stops = self._prepare(
            ids, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, stop, seed, None)
        stop_ids: Set[int] = set()
        if self.chat_template is None:  # ChatML: the turn ends at <|im_end|>, token or text
            stops.append(chat_mod.CHATML_END_OF_TURN)
            end = self._tokenizer().lookup(chat_mod.CHATML_END_OF_TURN)
            if end >= 0:
                stop_ids.add(end)
        gen = Generation(prompt_ids)
        return self._run(prompt_ids, max_tokens, params, seed_v, stops, True, gen, stop_ids, sequence), gen

    def chat(self, messages: Sequence[chat_mod.Message], max_tokens: Optional[int] = None,
             temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
             repeat_penalty: float = 1.0, stop: Union[None, str, Sequence[str]] = None, *, stream: bool = False,
             seed: Optional[int] = None, repeat_last_n: int = 64,
             **template_variables: Any) -> Union[str, Iterator[str]]:
        """The assistant's reply to messages ([{"role": "user", "content": "..."}, ...]).

        The prompt is the file's chat template rendered with jinja2 (ChatML when the file has
        none), tokenized by tokenize_chat (message text never becomes control tokens); the
        reply ends at the model's end-of-turn token. Other arguments as generate();
        max_tokens None lets the reply run to its end of turn (or the end of the context).
        """
        it, _ = self._chat_run(messages, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, stop, seed,
                               repeat_last_n, template_variables)
        return it if stream else "".join(it)

    # ---- llama-cpp-python style ---------------------------------------------------------
    def create_completion(self, prompt: Prompt, **kwargs: Any) -> Any:
        """llama-cpp-python's Llama.create_completion: a dict (or, with stream=True, an
        iterator of chunk dicts) in OpenAI's text_completion shape."""
        from .openai_compat import create_completion

        return create_completion(self, prompt, **kwargs)

    __call__ = create_completion

    def create_chat_completion(self, messages: Sequence[chat_mod.Message], **kwargs: Any) -> Any:
        """llama-cpp-python's Llama.create_chat_completion: OpenAI's chat.completion shape."""
        from .openai_compat import create_chat_completion

        return create_chat_completion(self, messages, **kwargs)


"""Several sequences in one Model, decoded together (continuous batching).

    model = turbosparse.Model("model.gguf", n_ctx=4 * 2048, n_seq_max=4)
    with turbosparse.batch.Scheduler(model) as sched:
        seq = sched.acquire()           # a handle on one of the context's sequences
        for chunk in model.create_completion("Hello", stream=True, sequence=seq):
            ...                         # run one such loop per thread, one sequence each
        seq.end()                       # frees its cells, gives the handle back

Two levels:

- Batch: the entries (token, position, sequence id, whether its logits are wanted) of one
  native decode, for Model.decode_batch. One graph computes them all, so the weights, and the
  sparse FFN's union of the tokens' active rows, are read once for the batch.
- Scheduler: a thread that runs one batch per step for every sequence with work. Generation
  code keeps its shape (Model._run, openai_compat): where it would decode, it calls
  SequenceHandle.sync(tokens), which hands the missing tokens to the scheduler and waits for
  the logits. Each step takes one token from every generating sequence and at most
  `prefill_chunk` prompt tokens (in arrival order), so a long prompt is prefilled across
  several steps while the others keep generating. Before a step the scheduler waits (briefly)
  for the sequences that got logits in the last step to come back with their next token, so
  that a step holds every busy sequence rather than whichever happened to be ready.

Thread safety: SequenceHandle methods may be called from any thread; the scheduler's thread
is the only one that calls the native batch decode.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Deque, Dict, List, Optional, Set, Tuple

import numpy as np

from .errors import ContextFullError, TurboSparseError

if TYPE_CHECKING:
    from .model import Model

DEFAULT_PREFILL_CHUNK = 64
RETURN_WAIT_S = 0.05  # longest wait for last step's sequences to come back before a step runs anyway


class SequenceCancelled(TurboSparseError):
    """The sequence was cancelled (SequenceHandle.cancel) while its tokens waited or decoded."""


@dataclass
class Batch:
    """The entries of one decode: parallel lists of token ids, positions, sequence ids and
    whether each entry's logits are wanted. A sequence's entries continue it: positions
    Model.sequence_length(seq), +1, ... in entry order."""

    tokens: List[int] = field(default_factory=list)
    pos: List[int] = field(default_factory=list)
    seq: List[int] = field(default_factory=list)
    logits: List[bool] = field(default_factory=list)

    def add(self, token: int, pos: int, seq: int, logits: bool = False) -> None:
        self.tokens.append(int(token))
        self.pos.append(int(pos))
        self.seq.append(int(seq))
        self.logits.append(bool(logits))

    def __len__(self) -> int:
        return len(self.tokens)

    def arrays(self) -> Tuple[List[int], List[int], List[int], List[int]]:
        n = len(self.tokens)
        if not (len(self.pos) == len(self.seq) == len(self.logits) == n):
            raise ValueError(f"a Batch's lists differ in length (tokens {n}, pos {len(self.pos)}, "
                             f"seq {len(self.seq)}, logits {len(self.logits)})")
        return self.tokens, self.pos, self.seq, [1 if w else 0 for w in self.logits]


@dataclass
class _Request:
    """What one sync asks for: decode `todo` (after removing the sequence's cells if `restart`),
    then hand back the logits after its last token."""

    todo: List[int]
    restart: bool
    done: threading.Event = field(default_factory=threading.Event)
    logits: Optional[np.ndarray] = None
    error: Optional[BaseException] = None


class SequenceHandle:
    """One of the context's sequences, used by one generation at a time. sync() is what the
    generation loop calls instead of decoding itself."""

    def __init__(self, scheduler: "Scheduler", seq_id: int, n_ctx: int) -> None:
        self.scheduler = scheduler
        self.id = seq_id
        self.n_ctx = n_ctx          # tokens this sequence may hold (its share of the context)
        self.tokens: List[int] = []  # what its KV cells hold
        self.logits: Optional[np.ndarray] = None  # after the last of them
        self.cancelled = False
        self.in_use = False
        self.generation = 0  # counts begin(): a late cancel of an earlier generation is ignored

    def sync(self, toks: List[int]) -> np.ndarray:
        """Makes the sequence's cells hold exactly toks (decoding only what they lack, in the
        scheduler's next steps) and returns the logits after the last token. Raises
        SequenceCancelled when cancelled meanwhile, ContextFullError beyond n_ctx."""
        if self.cancelled:
            raise SequenceCancelled("the sequence was cancelled")
        if len(toks) > self.n_ctx:
            raise ContextFullError(f"{len(toks)} tokens do not fit the context of {self.n_ctx} tokens "
                                   "(make the Model with a larger n_ctx, or shorten the prompt)")
        have = self.tokens
        if have == toks and self.logits is not None:
            return self.logits
        extends = len(have) < len(toks) and toks[:len(have)] == have
        req = _Request(list(toks[len(have):]) if extends else list(toks), restart=not extends)
        self.scheduler._submit(self, req)
        req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.logits is not None
        self.tokens, self.logits = list(toks), req.logits
        return req.logits

    def begin(self) -> int:
        """Starts a generation on the sequence (clears a cancel); returns its number for cancel."""
        with self.scheduler._cond:
            self.cancelled = False
            self.generation += 1
            return self.generation

    def cancel(self, generation: Optional[int] = None) -> None:
        """Stops the sequence's generation (only if it is still `generation`, when given): a
        sync waiting now (mid-prompt too) or later raises SequenceCancelled, and its cells are
        freed. begin() makes it usable again."""
        with self.scheduler._cond:
            if generation is not None and generation != self.generation:
                return
            self.cancelled = True
            self.scheduler._cancel(self)

    def finish(self) -> None:
        """The generation on this sequence is over: its cells are freed (the handle stays its
        owner's)."""
        self.scheduler._release(self, give_back=False)

    def end(self) -> None:
        """finish(), and the handle goes back to the scheduler's free list (acquire)."""
        self.scheduler._release(self, give_back=True)


@dataclass
class StepStats:
    """The scheduler's counters since it started."""

    steps: int = 0
    tokens: int = 0               # entries decoded (prompt and generated)
    generated_steps: int = 0      # steps that decoded at least one generated token
    union_density_sum: float = 0.0  # over those steps
    max_sequences: int = 0        # most sequences one step held
    last_sequences: int = 0       # sequences in the last step
    last_tokens: int = 0
    last_union_density: float = 0.0
    last_density: float = 0.0

    @property
    def mean_union_density(self) -> float:
        return self.union_density_sum / self.generated_steps if self.generated_steps else 0.0


class Scheduler:
    """The stepping thread over a Model made with n_seq_max sequences (see the module doc).
    Each sequence may hold n_ctx // n_seq_max tokens."""

    def __init__(self, model: "Model", prefill_chunk: int = DEFAULT_PREFILL_CHUNK) -> None:
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1 (got {prefill_chunk})")
        self.model = model
        self.prefill_chunk = prefill_chunk
        n_seq = model.n_seq_max
        self.sequences = [SequenceHandle(self, i, model.n_ctx // n_seq) for i in range(n_seq)]
        self.stats = StepStats()
        self._cond = threading.Condition(threading.RLock())
        self._pending: Dict[int, _Request] = {}   # seq id -> its request, in arrival order
        self._expected: Set[int] = set()          # got logits last step, not ended
        # cells to free before the next step: at the start every sequence's, so that cells the
        # model's own generate() (sequence 0) or an earlier scheduler left are not continued
        self._to_remove: Set[int] = set(range(n_seq))
        self._free: Deque[SequenceHandle] = collections.deque(self.sequences)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="turbosparse-scheduler", daemon=True)
        self._thread.start()

    # ---- handles ----------------------------------------------------------------------------
    def acquire(self) -> SequenceHandle:
        """A free sequence; RuntimeError when all are in use."""
        with self._cond:
            if not self._free:
                raise RuntimeError(f"all {len(self.sequences)} sequences are in use")
            h = self._free.popleft()
            h.in_use, h.cancelled = True, False
            return h

    @property
    def n_busy(self) -> int:
        with self._cond:
            return len(self.sequences) - len(self._free)

    def _submit(self, h: SequenceHandle, req: _Request) -> None:
        with self._cond:
            if self._closed:
                req.error = SequenceCancelled("the scheduler is closed")
                req.done.set()
                return
            self._pending[h.id] = req
            self._cond.notify_all()

    def _cancel(self, h: SequenceHandle) -> None:
        with self._cond:
            req = self._pending.pop(h.id, None)
            if req is not None:
                req.error = SequenceCancelled("the sequence was cancelled")
                req.done.set()
            self._forget(h)
            self._cond.notify_all()

    def _release(self, h: SequenceHandle, give_back: bool) -> None:
        with self._cond:
            req = self._pending.pop(h.id, None)
            if req is not None:
                req.error = SequenceCancelled("the sequence ended")
                req.done.set()
            self._forget(h)
            if give_back and h.in_use:
                h.in_use = False
                self._free.append(h)
            self._cond.notify_all()

    def _forget(self, h: SequenceHandle) -> None:
        """(lock held) Drops the sequence's cells: freed by the scheduler thread before its next
        step, which is the only thread that touches the context's cells."""
        self._expected.discard(h.id)
        self._to_remove.add(h.id)
        h.tokens, h.logits = [], None

    # ---- the loop ---------------------------------------------------------------------------
    def _next_work(self) -> Optional[Tuple[List[Tuple[SequenceHandle, _Request]], Set[int]]]:
        """(lock held) Waits for work; None when closed."""
        while not self._closed and not self._pending and not self._to_remove:
            self._cond.wait()
        if self._closed:
            return None
        # last step's sequences come back with their next token within a sampling's time
        deadline = time.monotonic() + RETURN_WAIT_S
        while not self._closed and not self._expected <= set(self._pending):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        remove, self._to_remove = self._to_remove, set()
        work = [(self.sequences[i], r) for i, r in self._pending.items()]
        return work, remove

    def _loop(self) -> None:
        model = self.model
        while True:
            with self._cond:
                got = self._next_work()
            if got is None:
                return
            work, remove = got
            for i in remove:
                try:
                    model.remove_sequence(i)
                except TurboSparseError:
                    pass
            if work:
                self._step(work)

    def _step(self, work: List[Tuple[SequenceHandle, _Request]]) -> None:
        """One decode: every generating sequence's token, then prompt chunks within the budget."""
        model = self.model
        batch = Batch()
        finishing: List[Tuple[SequenceHandle, _Request, int]] = []  # (handle, request, its logits row)
        budget = self.prefill_chunk
        n_rows = n_generated = 0
        try:
            for h, req in work:
                if req.restart:
                    model.remove_sequence(h.id)
                    req.restart = False
            order = sorted(work, key=lambda w: len(w[1].todo) > 1)  # single tokens first, then prompts
            for h, req in order:
                if len(req.todo) > 1 and budget <= 0:
                    continue
                take = 1 if len(req.todo) == 1 else min(len(req.todo), budget)
                if len(req.todo) > 1:
                    budget -= take
                else:
                    n_generated += 1
                start = model.sequence_length(h.id)
                for k in range(take):
                    last = k == take - 1 and take == len(req.todo)
                    batch.add(req.todo[k], start + k, h.id, last)
                    if last:
                        finishing.append((h, req, n_rows))
                        n_rows += 1
                req.todo = req.todo[take:]
            logits = model.decode_batch(batch)
        except BaseException as e:  # the step's requests fail together (their cells are left as they were)
            with self._cond:
                for h, req in work:
                    if self._pending.get(h.id) is req:
                        del self._pending[h.id]
                        req.error = e
                        req.done.set()
                        self._forget(h)
            return
        step = model.last_step
        with self._cond:
            st = self.stats
            st.steps += 1
            st.tokens += len(batch)
            st.last_sequences = len(set(batch.seq))
            st.max_sequences = max(st.max_sequences, st.last_sequences)
            st.last_tokens = len(batch)
            st.last_union_density = step["ffn_union_density"]
            st.last_density = step["ffn_density"]
            if n_generated:
                st.generated_steps += 1
                st.union_density_sum += step["ffn_union_density"]
            self._expected = set()
            for h, req, row in finishing:
                if self._pending.get(h.id) is req:  # not cancelled meanwhile
                    del self._pending[h.id]
                    req.logits = logits[row].copy()
                    req.done.set()
                    self._expected.add(h.id)

    def close(self) -> None:
        """Stops the thread; waiting syncs raise SequenceCancelled. The Model stays open."""
        with self._cond:
            self._closed = True
            for req in self._pending.values():
                req.error = SequenceCancelled("the scheduler is closed")
                req.done.set()
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Batch", "Scheduler", "SequenceHandle", "SequenceCancelled", "StepStats"]

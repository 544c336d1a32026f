"""The slot pool: N sequences of one turbosparse.Model context (turbosparse.batch), and the
worker threads that run generations on them.

A request waits for a free slot in a bounded FIFO queue (full: QueueFull, answered 503), then
its generation runs in a thread of its own and hands each chunk to the event loop. Where the
generation decodes, it hands its tokens to the batch scheduler (SequenceHandle.sync), whose
one thread decodes every busy slot's next token in one batched graph per step and prefills
new prompts in chunks between them. A client that goes away cancels its job: the sequence's
wait (mid-prompt too) ends at once and the thread stops; the slot is given back when the
thread has ended, not before, so a slot never runs two sequences.

All SlotPool methods run on the event loop's thread; only Job._work runs elsewhere.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

from ..batch import SequenceCancelled, SequenceHandle


class QueueFull(Exception):
    """Every slot is busy and the queue of waiting requests is full."""


@dataclass
class Slot:
    index: int
    sequence: SequenceHandle
    busy: bool = False


class SlotPool:
    def __init__(self, sequences: List[SequenceHandle], max_queue: int) -> None:
        if not sequences:
            raise ValueError("a slot pool needs at least one sequence")
        self.slots = [Slot(i, s) for i, s in enumerate(sequences)]
        self.max_queue = max_queue
        self._free: Deque[Slot] = collections.deque(self.slots)
        self._waiters: Deque["asyncio.Future[Slot]"] = collections.deque()

    @property
    def n_busy(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    @property
    def n_waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> Slot:
        """A free slot, waiting in line for one; QueueFull when the line is full."""
        if self._free and not self.n_waiting:
            return self._take(self._free.popleft())
        if self.n_waiting >= self.max_queue:
            raise QueueFull(f"all {len(self.slots)} slots are busy and {self.n_waiting} requests are waiting "
                            f"(the queue holds {self.max_queue}): try again later")
        fut: "asyncio.Future[Slot]" = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            # the client left while waiting; if a slot was handed over at the same moment, pass it on
            if fut.done() and not fut.cancelled():
                self.release(fut.result())
            raise
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    @staticmethod
    def _take(slot: Slot) -> Slot:
        slot.busy = True
        return slot

    def release(self, slot: Slot) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(slot)  # stays busy: handed straight to the next request
                return
        slot.busy = False
        self._free.append(slot)

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until no slot is busy (at shutdown, before the models are closed). Polls: the
        pool is made before uvicorn's loop runs, so it holds no asyncio objects of its own
        (Python 3.9 binds them to the loop current at their creation)."""
        deadline = time.monotonic() + timeout
        while self.n_busy:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True


# What a job's thread hands to the event loop: ("chunk", dict), ("error", exception), ("end", None).
Event = Tuple[str, Any]


@dataclass
class Job:
    """One generation on one slot. `start(fn)` runs fn(sequence) -> iterator of chunk dicts in a
    thread; `events` receives them on the loop; `cancel()` stops it (a prompt mid-way too)."""

    pool: SlotPool
    slot: Slot
    loop: asyncio.AbstractEventLoop
    on_end: Callable[["Job"], None]
    events: "asyncio.Queue[Event]" = field(default_factory=asyncio.Queue)
    started_at: float = field(default_factory=time.monotonic)
    first_chunk_at: Optional[float] = None
    last_chunk: Optional[Dict[str, Any]] = None
    cancelled: bool = False
    error: Optional[BaseException] = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _generation: int = -1  # the sequence's generation number this job runs

    def start(self, fn: Callable[[SequenceHandle], Iterator[Dict[str, Any]]]) -> None:
        self._generation = self.slot.sequence.begin()
        threading.Thread(target=self._work, args=(fn,), name=f"ts-slot-{self.slot.index}", daemon=True).start()

    def cancel(self) -> None:
        self.cancelled = True
        self._stop.set()
        self.slot.sequence.cancel(self._generation)  # ignored once a later job runs on the slot

    def _post(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed (the process is ending)
            pass

    def _work(self, fn: Callable[[SequenceHandle], Iterator[Dict[str, Any]]]) -> None:
        it: Optional[Iterator[Dict[str, Any]]] = None
        try:
            it = fn(self.slot.sequence)
            for chunk in it:
                if self._stop.is_set():
                    break
                if self.first_chunk_at is None and _has_text(chunk):
                    self.first_chunk_at = time.monotonic()
                self.last_chunk = chunk
                self._post("chunk", chunk)
        except SequenceCancelled:
            pass  # cancel() was called: nobody waits for an answer
        except Exception as e:  # argument errors (before the first chunk) and runtime failures
            self.error = e
            self._post("error", e)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()  # ends the generator: its sampler is freed now, in this thread
                except Exception:
                    pass
            self.slot.sequence.finish()  # its cells are freed; the slot's next job starts afresh
            self._post("end", None)
            try:
                self.loop.call_soon_threadsafe(self._finish)
            except RuntimeError:
                pass

    def _finish(self) -> None:
        self.pool.release(self.slot)
        self.on_end(self)


def _has_text(chunk: Dict[str, Any]) -> bool:
    """Whether a chunk carries generated text (a chat stream's first chunk is only the role)."""
    choices = chunk.get("choices") or [{}]
    c = choices[0]
    return bool(c.get("text") or (c.get("delta") or {}).get("content"))

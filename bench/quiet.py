"""Measuring on a shared machine: wait until other processes leave the cores alone, and
redo a measurement during which they did not.

Both engines run their threads in lock-step (ggml's barriers spin), so one busy core
elsewhere can halve a 2-thread result; a single load-average reading before the run does
not catch the compile that starts a minute later. "Others" is the CPU time the whole machine
spent (/proc/stat, steal included) minus what this process and its waited-for children
(llama-bench) spent, per second of wall time: 1.0 = one core taken away.

Nice values and autogroups: with autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled,
the Linux default) each session is one scheduling group and a process's nice value only counts
inside its own session, so another session's nice-19 job still takes half of a 2-core machine.
Run the benchmark in its own session with a raised autogroup priority
    setsid bash -c 'echo -20 > /proc/self/autogroup; exec python bench/bench_decode.py ...'
and niced background jobs then only get the cores this process leaves idle; in that case
(autogroup_nice() < 0) their CPU time is neither waited for nor counted against a measurement.
Without it, everything other processes use counts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

T = TypeVar("T")
_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[int, int]:
    """(all busy ticks, ticks of niced processes among them)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return user + nice + system + irq + softirq + steal, nice


def _own_ticks() -> int:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3): utime, stime, cutime, cstime are fields 14..17
    return sum(int(x) for x in fields[11:15])


@dataclass
class Snapshot:
    t: float
    busy: int
    nice: int
    own: int


def autogroup_nice() -> Optional[int]:
    """The nice value of this process's autogroup, or None without autogroups."""
    try:
        with open("/proc/self/autogroup") as f:
            return int(f.read().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None


def snapshot() -> Snapshot:
    busy, nice = _machine_busy()
    return Snapshot(time.perf_counter(), busy, nice, _own_ticks())


def others_since(s0: Snapshot, count_niced: bool = True) -> float:
    """Cores' worth of CPU other processes used since s0; count_niced=False leaves out
    processes running at a positive nice value."""
    s1 = snapshot()
    dt = max(s1.t - s0.t, 1e-6)
    ticks = (s1.busy - s0.busy) - (s1.own - s0.own)
    if not count_niced:
        ticks -= s1.nice - s0.nice
    return max(0.0, ticks / _TICKS / dt)


class Quiet:
    def __init__(self, enabled: bool, max_others: float = 0.25, timeout_s: float = 1800.0, tries: int = 5,
                 log: Callable[[str], None] = print):
        self.enabled, self.max_others, self.timeout_s, self.tries, self.log = enabled, max_others, timeout_s, tries, log
        nice = autogroup_nice()
        self.count_niced = nice is None or nice >= 0
        self.waited_s = 0.0
        self.redone = 0

    def wait(self) -> None:
        """Returns once others used at most max_others for two seconds (or timeout)."""
        if not self.enabled:
            return
        t0 = time.perf_counter()
        said = False
        while time.perf_counter() - t0 < self.timeout_s:
            s = snapshot()
            time.sleep(2.0)
            busy = others_since(s, self.count_niced)
            if busy <= self.max_others:
                break
            if not said:
                self.log(f"  waiting for a quiet machine (others use {busy:.2f} cores)")
                said = True
        self.waited_s += time.perf_counter() - t0

    def measure(self, label: str, fn: Callable[[], T]) -> tuple[T, float]:
        """fn() on a quiet machine; redone (up to `tries` times) when others took more than
        max_others cores while it ran. Returns (result, others' cores during the kept run)."""
        result: Optional[T] = None
        busy = 0.0
        for attempt in range(self.tries if self.enabled else 1):
            self.wait()
            s = snapshot()
            result = fn()
            busy = others_since(s, self.count_niced)
            if not self.enabled or busy <= self.max_others:
                break
            self.redone += 1
            self.log(f"  {label}: others used {busy:.2f} cores meanwhile; measuring again")
        return result, busy  # type: ignore[return-value]

"""Counters of the server and their Prometheus text exposition (GET /metrics).

Kept by hand rather than with prometheus_client: a dozen numbers, one process, and no extra
dependency. Counters only grow; gauges are read when /metrics is asked.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Tuple

from ..batch import StepStats
from ..model import Stats

RATE_WINDOW_S = 10.0  # generated tokens/s is over this many recent seconds


@dataclass
class Metrics:
    requests: Dict[Tuple[str, str], int] = field(default_factory=lambda: collections.defaultdict(int))
    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_sum_s: float = 0.0   # time to first token (from the start of generation), summed
    ttft_count: int = 0
    _recent: Deque[Tuple[float, int]] = field(default_factory=collections.deque)  # (time, tokens) of ended jobs

    def count_request(self, endpoint: str, outcome: str) -> None:
        """outcome: ok, cancelled (client went away), client_error (4xx), rejected (503), error (5xx)."""
        self.requests[(endpoint, outcome)] += 1

    def count_tokens(self, prompt: int, generated: int, ttft_s: float = -1.0) -> None:
        self.prompt_tokens += prompt
        self.generated_tokens += generated
        if ttft_s >= 0:
            self.ttft_sum_s += ttft_s
            self.ttft_count += 1
        now = time.monotonic()
        self._recent.append((now, generated))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def recent_tokens_per_s(self) -> float:
        """Tokens of the generations that ended in the last RATE_WINDOW_S seconds, per second."""
        now = time.monotonic()
        self._trim(now)
        return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def render(self, model_stats: Stats, steps: StepStats, slots_total: int, slots_busy: int, queue_length: int,
               queue_capacity: int) -> str:
        lines: List[str] = []

        def metric(name: str, kind: str, help_: str, samples: List[Tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {value:.6g}" if isinstance(value, float) else f"{name}{labels} {value}")

        metric("turbosparse_requests_total", "counter", "Requests to the generation endpoints, by outcome.",
               [(f'{{endpoint="{e}",outcome="{o}"}}', n) for (e, o), n in sorted(self.requests.items())])
        metric("turbosparse_prompt_tokens_total", "counter", "Prompt tokens of the generations run.",
               [("", self.prompt_tokens)])
        metric("turbosparse_generated_tokens_total", "counter", "Tokens generated.", [("", self.generated_tokens)])
        metric("turbosparse_generated_tokens_per_second", "gauge",
               f"Tokens generated per second, all slots, over the last {RATE_WINDOW_S:g} s.",
               [("", self.recent_tokens_per_s())])
        metric("turbosparse_decode_tokens_per_second", "gauge",
               "Generated tokens per second of decoding, all slots together (a batched step's time is shared "
               "between its prompt and generated tokens by count), since start.",
               [("", model_stats.gen_tokens_per_s)])
        metric("turbosparse_prompt_tokens_per_second", "gauge",
               "Prompt tokens per second of prompt processing, all slots together, since start.",
               [("", model_stats.prompt_tokens_per_s)])
        metric("turbosparse_time_to_first_token_seconds_avg", "gauge",
               "Mean time from a slot starting a request to its first chunk.",
               [("", self.ttft_sum_s / self.ttft_count if self.ttft_count else 0.0)])
        metric("turbosparse_ffn_density", "gauge",
               "Share of FFN neurons computed (1 = dense), over every token of every slot since start.",
               [("", model_stats.ffn_density)])
        metric("turbosparse_ffn_union_density", "gauge",
               "FFN weight rows read in the last batched step over the FFNs' rows: the union of the step's "
               "tokens' active rows, read once (1 = dense).", [("", steps.last_union_density)])
        metric("turbosparse_ffn_union_density_avg", "gauge",
               "Mean of the union density over the steps that generated tokens, since start.",
               [("", steps.mean_union_density)])
        metric("turbosparse_batch_steps_total", "counter", "Batched decode steps run.", [("", steps.steps)])
        metric("turbosparse_batch_sequences", "gauge", "Sequences in the last batched step.",
               [("", steps.last_sequences)])
        metric("turbosparse_batch_sequences_max", "gauge", "Most sequences one batched step held, since start.",
               [("", steps.max_sequences)])
        metric("turbosparse_batch_tokens", "gauge", "Tokens (generated and prompt) in the last batched step.",
               [("", steps.last_tokens)])
        metric("turbosparse_slots", "gauge", "Slots (sequences decoded together).", [("", slots_total)])
        metric("turbosparse_slots_busy", "gauge", "Slots running a request.", [("", slots_busy)])
        metric("turbosparse_queue_length", "gauge", "Requests waiting for a slot.", [("", queue_length)])
        metric("turbosparse_queue_capacity", "gauge", "Requests that may wait before 503.", [("", queue_capacity)])
        return "\n".join(lines) + "\n"

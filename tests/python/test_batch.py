"""turbosparse.batch on the bundled model: several sequences decoded together in one context
give, at temperature 0, the texts each gives alone; Batch/decode_batch errors are clear
exceptions that leave the cache as it was; a cancelled sequence's wait ends at once."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import turbosparse
from turbosparse.batch import Batch, Scheduler, SequenceCancelled
from turbosparse.errors import ContextFullError, DecodeError

PROMPTS = ["The Python interpreter", "Return a list of", "os.path.join(", "class A:\n    def", "1, 2, 3, 4, 5,"]
N_CTX = 256


def test_concurrent_sequences_give_the_texts_of_one_at_a_time():
    with turbosparse.Model(n_ctx=N_CTX, n_threads=1) as alone:
        want = [alone.generate(p, max_tokens=24, temperature=0) for p in PROMPTS]
    with turbosparse.Model(n_ctx=N_CTX * 4, n_threads=1, n_seq_max=4) as model:
        # a prefill chunk of 4 tokens: prompts are spread over several steps beside the others
        with Scheduler(model, prefill_chunk=4) as sched:
            got: list = [None] * len(PROMPTS)
            sem = threading.Semaphore(4)

            def run(i: int) -> None:
                with sem:
                    seq = sched.acquire()
                    try:
                        chunks = model.create_completion(PROMPTS[i], max_tokens=24, temperature=0, stream=True,
                                                         sequence=seq)
                        got[i] = "".join(c["choices"][0]["text"] for c in chunks)
                    finally:
                        seq.end()

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert got == want
            assert len(set(want)) > 2
            st = sched.stats
            # the sequences did share steps: fewer steps than tokens, and a step held several
            assert st.steps < st.tokens
            assert 0.0 < st.mean_union_density <= 1.0


def test_decode_batch_matches_eval_and_refuses_bad_entries():
    with turbosparse.Model(n_ctx=64, n_threads=1, n_seq_max=2) as model:
        ids = model.tokenize("Return a list of")
        want = model.eval(ids)[-1]
        model.reset()
        b = Batch()
        for i, t in enumerate(ids):
            b.add(t, i, 1, logits=i == len(ids) - 1)
        out = model.decode_batch(b)
        assert out.shape == (1, model.n_vocab)
        np.testing.assert_array_equal(out[0], want)
        assert model.sequence_length(1) == len(ids) and model.sequence_length(0) == 0

        for bad, words in [((ids[0], 0, 2), "sequence id 2"), ((ids[0], len(ids) + 3, 1), "out of order"),
                           ((10**6, 0, 0), "outside the vocabulary")]:
            bb = Batch()
            bb.add(*bad)
            with pytest.raises(DecodeError, match=words):
                model.decode_batch(bb)
            assert model.sequence_length(1) == len(ids)
        full = Batch()
        for i in range(64):
            full.add(ids[0], i, 0)
        with pytest.raises(ContextFullError, match="context full"):
            model.decode_batch(full)
        with pytest.raises(ValueError, match="out of range"):
            model.sequence_length(7)
        model.remove_sequence(1)
        assert model.sequence_length(1) == 0


def test_cancel_ends_a_waiting_prompt():
    with turbosparse.Model(n_ctx=1024, n_threads=1, n_seq_max=2) as model:
        with Scheduler(model, prefill_chunk=1) as sched:  # a long prompt takes many steps
            seq = sched.acquire()
            errors: list = []

            def run() -> None:
                try:
                    seq.sync(list(range(1, 400)))
                except SequenceCancelled as e:
                    errors.append(e)

            t = threading.Thread(target=run)
            t.start()
            deadline = time.monotonic() + 30
            while sched.stats.steps < 3 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert sched.stats.steps >= 3
            seq.cancel()
            t.join(timeout=10)
            assert not t.is_alive() and errors
            seq.end()
            assert sched.n_busy == 0


def test_scheduler_starts_from_empty_sequences():
    """A sequence the model's own generate() filled (sequence 0) is emptied, not continued."""
    with turbosparse.Model(n_ctx=N_CTX * 2, n_threads=1, n_seq_max=2) as model:
        want = model.generate(PROMPTS[4], max_tokens=16, temperature=0)
        with Scheduler(model) as sched:
            seq = sched.acquire()
            assert seq.id == 0
            got = model.create_completion(PROMPTS[4], max_tokens=16, temperature=0, sequence=seq)
            assert got["choices"][0]["text"] == want

"""Reconnect delays: full jitter inside an exponential, capped window; reset after health."""

from __future__ import annotations

import random

from zimsend.agent.backoff import Backoff


def test_each_delay_is_within_the_exponential_window_and_never_above_the_cap() -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=30.0, rng=random.Random(1))
    for attempt in range(200):
        bound = min(30.0, 2.0**attempt)
        assert backoff.bound() == bound
        assert 0.0 <= backoff.next() <= bound


def test_full_jitter_spreads_delays_over_the_whole_window() -> None:
    delays = [Backoff(base=8.0, cap=8.0, rng=random.Random(seed)).next() for seed in range(500)]
    assert min(delays) < 1.0
    assert max(delays) > 7.0


def test_reset_after_a_healthy_connection_starts_small_again() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(2))
    for _ in range(10):
        backoff.next()
    assert backoff.bound() == 60.0
    backoff.reset()
    assert backoff.bound() == 1.0
    assert backoff.next() <= 1.0


def test_thousands_of_attempts_do_not_overflow() -> None:
    backoff = Backoff(cap=60.0, rng=random.Random(3))
    for _ in range(5000):
        assert backoff.next() <= 60.0

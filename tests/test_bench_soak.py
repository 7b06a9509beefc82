"""The soak's verdict (`zimsend bench --scenarios soak`, server/zimsend/server/bench/soak.py):
the soak itself runs 10 minutes and is not part of the suite; what decides "keeps growing" is,
on series shaped like what it samples every 5 s over 10 minutes."""

from __future__ import annotations

import random
import subprocess

from _processes import ZIMSEND

from zimsend.server.bench.soak import MIB, SAMPLE_EVERY_S, verdict

SECONDS = 600.0


def _series(
    start_mib: float, mib_per_min: float, noise_mib: float = 0.0
) -> list[tuple[float, int]]:
    rng = random.Random(7)
    points = []
    at = SAMPLE_EVERY_S
    while at <= SECONDS:
        warm = min(1.0, at / 60) * 20  # the first minute fills caches: +20 MiB, then flat
        rss = start_mib + warm + mib_per_min * at / 60 + rng.uniform(-noise_mib, noise_mib)
        points.append((at, int(rss * MIB)))
        at += SAMPLE_EVERY_S
    return points


def test_a_process_that_levels_off_after_warm_up_is_flat() -> None:
    result = verdict(_series(60, 0.0, noise_mib=1.0), SECONDS)
    assert result["growing"] is False, result
    assert abs(result["growth_mib"]) < 1


def test_issue_12s_agent_leak_is_caught() -> None:
    """16 MB over 10 minutes (issue 12 item 12) is 1.6 MB a minute."""
    result = verdict(_series(60, 1.6, noise_mib=1.0), SECONDS)
    assert result["growing"] is True, result
    assert 1.2 < result["slope_mib_per_min"] < 2.0


def test_a_big_process_may_wander_by_a_few_percent() -> None:
    result = verdict(_series(400, 0.5, noise_mib=4.0), SECONDS)  # +3 MiB: within 4 % of 420
    assert result["growing"] is False, result


def test_too_short_a_run_is_not_judged() -> None:
    result = verdict([(5.0, 1), (10.0, 2)], SECONDS)
    assert result == {"samples": 0, "growing": False, "note": "too few samples to judge"}


def test_the_soak_runs_alone() -> None:
    done = subprocess.run(
        [ZIMSEND, "bench", "--scenarios", "soak,grpc"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "run the soak alone" in done.stderr

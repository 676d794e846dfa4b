# SPDX-License-Identifier: MIT
"""Growth from the live-bytes series (agent/history.py): what ranks a leak first."""

from __future__ import annotations

import random

from trackleak.history import History, pid_site_key, theil_sen
from trackleak.table import Row, sorted_rows


def row(function: str, live: int, pid: int = 1) -> Row:
    return Row(function=function, file="/app/a.py", line=len(function), live_bytes=live, pid=pid)


def feed(history: History, series: dict[str, list[int]], step: float = 1.0) -> list[Row]:
    n = len(next(iter(series.values())))
    for i in range(n):
        history.observe(i * step, [row(name, values[i]) for name, values in series.items()])
    return history.annotate([row(name, values[-1]) for name, values in series.items()])


def test_theil_sen_ignores_one_outlier():
    points = [(float(t), 100.0 * t) for t in range(10)]
    points[3] = (3.0, 1e9)
    assert abs(theil_sen(points) - 100.0) < 1e-6


def test_a_start_up_burst_is_not_growth_and_a_leak_is():
    h = History()
    rows = feed(
        h,
        {
            "startup": [0] + [5 << 20] * 19,  # one burst, then flat
            "leak": [i * (1 << 20) for i in range(20)],  # 1 MiB/s
            "flat": [10 << 20] * 20,
        },
    )
    by = {r.function: r for r in rows}
    assert by["leak"].growing and abs(by["leak"].growth_bytes_per_s - (1 << 20)) < 1
    assert not by["startup"].growing and by["startup"].growth_bytes_per_s == 0.0
    assert not by["flat"].growing
    assert sorted_rows(rows)[0].function == "leak"


def test_growth_that_stopped_half_a_window_ago_is_not_growing():
    h = History()
    values = [i * (1 << 20) for i in range(10)] + [10 << 20] * 10
    (r,) = feed(h, {"cache": values})
    assert not r.growing


def test_noise_of_a_churning_site_is_not_growth():
    # A healthy site whose estimate wanders around 10 MiB by a few sampling errors.
    rng = random.Random(7)
    h = History()
    h.interval = 50 * 1024
    sigma = (50 * 1024 * (10 << 20)) ** 0.5
    values = [int((10 << 20) + rng.gauss(0, sigma)) for _ in range(30)]
    (r,) = feed(h, {"churn": values})
    assert not r.growing


def test_two_points_give_a_slope_but_not_a_verdict():
    h = History()
    (r,) = feed(h, {"x": [0, 1 << 20]})
    assert r.growth_bytes_per_s == float(1 << 20) and not r.growing


def test_series_is_thinned_but_spans_the_run():
    h = History()
    for i in range(1000):
        h.observe(float(i), [row("a", i)])
    series = h.series(("a", "/app/a.py", 1, False))
    assert 120 <= len(series) <= 240
    assert series[0][0] == 0.0 and series[-1][0] >= 990
    doc = h.to_json([("a", "/app/a.py", 1, False)])
    assert doc[0]["function"] == "a" and doc[0]["points"][0] == [0.0, 0]


def test_per_process_tracks():
    h = History(key=pid_site_key)
    for i in range(10):
        h.observe(float(i), [row("a", i << 20, pid=1), row("a", 1 << 20, pid=2)])
    rows = h.annotate([row("a", 9 << 20, pid=1), row("a", 1 << 20, pid=2)])
    assert [r.growing for r in rows] == [True, False]
    assert h.to_json([(1, ("a", "/app/a.py", 1, False))])[0]["pid"] == 1


def test_each_call_path_gets_its_own_growth():
    """Two callers into one site: the row grows, and so does only the caller that keeps its data."""
    from trackleak.stacks import Stack

    def site(t: int) -> Row:
        r = row("append", live=t * 3 * (1 << 20))
        r.stacks = [
            Stack(
                frames=(("leaky", "/app/a.py", 1), ("append", "/app/a.py", 6)), live_bytes=t * 3 * (1 << 20)
            ),
            Stack(frames=(("healthy", "/app/a.py", 2), ("append", "/app/a.py", 6)), live_bytes=1 << 20),
        ]
        return r

    h = History()
    for t in range(20):
        h.observe(float(t), [site(t)])
    (out,) = h.annotate([site(19)])
    by = {s.frames[0][0]: s for s in out.stacks}
    assert out.growing and abs(by["leaky"].growth_bytes_per_s - 3 * (1 << 20)) < 1
    assert by["healthy"].growth_bytes_per_s == 0.0

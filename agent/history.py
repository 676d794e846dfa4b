# SPDX-License-Identifier: MIT
"""Live bytes of each site over time, and the growth that ranks leaks first.

Every reader (``trackleak run``'s live view and final table, ``trackleak-agent``, ``trackleak
inspect --watch``) takes the table at every interval and hands it to ``History.observe``. Per site
we keep the recent points (time, live bytes) for the fit, and a longer, thinned series for a report
to plot (``series``, kept in the JSON output).

Growth is the Theil-Sen slope (the median of the slopes between every pair of points) over the
recent window: a single start-up burst moves only the pairs that straddle it, a minority, so it
cannot fake a trend; sampling noise averages out. A site **keeps growing** (``Row.growing``) when

- it was watched for at least ``MIN_POINTS`` points,
- the slope over the whole window and over its recent half are both positive (growth that stopped
  half a window ago is not "keeps growing"), and
- what it grew over the window exceeds both ``MIN_GROWTH_BYTES`` and the sampling noise of its
  estimate (``NOISE_SIGMAS`` standard errors, trackleak.sampling.live_bytes_stderr).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable

from .sampling import live_bytes_stderr
from .table import Row

WINDOW_S = 120.0  # the recent window of the fit
MIN_POINTS = 3
MIN_GROWTH_BYTES = 64 * 1024
NOISE_SIGMAS = 3.0
FIT_POINTS = 48  # points kept in the window (older ones thinned): at most 1128 pairs per fit
SERIES_POINTS = 240  # points kept per site for plotting (halved when full)
MAX_PATH_TRACKS = 4096  # call paths (a row's stacks) watched for their own growth; later ones are not


def site_key(row: Row) -> Hashable:
    """Merged tables: one track per site."""
    return row.key


def pid_site_key(row: Row) -> Hashable:
    """Per-process tables: one track per (pid, site)."""
    return (row.pid, row.key)


def theil_sen(points: list[tuple[float, float]]) -> float | None:
    """Median of the pairwise slopes; None with fewer than two distinct times."""
    slopes = []
    n = len(points)
    for i in range(n):
        ti, yi = points[i]
        for j in range(i + 1, n):
            tj, yj = points[j]
            if tj != ti:
                slopes.append((yj - yi) / (tj - ti))
    if not slopes:
        return None
    slopes.sort()
    mid = len(slopes) // 2
    return slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2.0


@dataclass
class _Track:
    recent: deque = field(default_factory=deque)  # (t, live) within the window
    series: list = field(default_factory=list)  # (t, live), thinned
    stride: int = 1  # keep every stride-th observation in series
    seen: int = 0


@dataclass
class History:
    window_s: float = WINDOW_S
    tracks: dict[Hashable, _Track] = field(default_factory=dict)
    # A row's call paths (Row.stacks), by (site key, frames): the recent window only (no series to
    # plot), at most MAX_PATH_TRACKS of them, so that each path gets its own growth.
    paths: dict[Hashable, _Track] = field(default_factory=dict)
    interval: int = 0  # the sampling interval R of the rows observed (for the noise floor)

    key: Callable[[Row], Hashable] = site_key

    def observe(self, t: float, rows: Iterable[Row], *, interval: int | None = None) -> None:
        """Record each row's live bytes at time T (seconds)."""
        if interval is not None:
            self.interval = interval
        for row in rows:
            k = self.key(row)
            track = self.tracks.get(k)
            if track is None:
                track = self.tracks[k] = _Track()
            self._recent(track, t, row.live_bytes)
            for stack in row.stacks or ():
                path = self.paths.get((k, stack.frames))
                if path is None:
                    if len(self.paths) >= MAX_PATH_TRACKS:
                        continue
                    path = self.paths[(k, stack.frames)] = _Track()
                self._recent(path, t, stack.live_bytes)
            if track.seen % track.stride == 0:
                track.series.append((round(float(t), 3), int(row.live_bytes)))
                if len(track.series) > SERIES_POINTS:
                    track.series = track.series[::2]
                    track.stride *= 2
            track.seen += 1

    def _recent(self, track: _Track, t: float, live: int) -> None:
        track.recent.append((float(t), float(live)))
        while track.recent and track.recent[0][0] < t - self.window_s:
            track.recent.popleft()
        if len(track.recent) > FIT_POINTS:
            # Thin the older half, keep the newest points dense.
            old = list(track.recent)[: len(track.recent) // 2]
            new = list(track.recent)[len(track.recent) // 2 :]
            track.recent = deque(old[::2] + new)

    def growth(self, key: Hashable, live_now: int | None = None) -> tuple[float | None, bool]:
        """(bytes per second over the window, keeps growing) for one site."""
        return self._growth(self.tracks.get(key), live_now)

    def _growth(self, track: _Track | None, live_now: int | None) -> tuple[float | None, bool]:
        if track is None or len(track.recent) < 2:
            return None, False
        points = list(track.recent)
        span = points[-1][0] - points[0][0]
        if span <= 0:
            return None, False
        values = [y for _, y in points]
        if max(values) - min(values) < MIN_GROWTH_BYTES:
            # Cannot have grown enough to count: the end-to-end slope is shown, no costly fit.
            return (points[-1][1] - points[0][1]) / span, False
        slope = theil_sen(points)
        if slope is None:
            return None, False
        if len(points) < MIN_POINTS:
            return slope, False
        recent = theil_sen(points[len(points) // 2 :])
        live = points[-1][1] if live_now is None else live_now
        noise = NOISE_SIGMAS * live_bytes_stderr(live, self.interval)
        grew = slope * span
        growing = slope > 0 and (recent or 0.0) > 0 and grew >= max(MIN_GROWTH_BYTES, noise)
        return slope, growing

    def annotate(self, rows: Iterable[Row]) -> list[Row]:
        """Set growth_bytes_per_s and growing on ROWS (in place) from what was observed."""
        rows = list(rows)
        for row in rows:
            slope, growing = self.growth(self.key(row), row.live_bytes)
            row.growth_bytes_per_s = None if slope is None else round(slope, 1)
            row.growing = growing
            for stack in row.stacks or ():
                slope, _ = self._growth(self.paths.get((self.key(row), stack.frames)), stack.live_bytes)
                stack.growth_bytes_per_s = None if slope is None else round(slope, 1)
        return rows

    def series(self, key: Hashable) -> list[tuple[float, int]]:
        """The thinned (t, live bytes) series of one track."""
        track = self.tracks.get(key)
        return list(track.series) if track else []

    def to_json(self, keys: Iterable[Hashable]) -> list[dict]:
        """The series of the given site keys ((function, file, line, native), or (pid, that) for
        per-process tracks), for a run's JSON document: a report can plot them."""
        out = []
        for key in keys:
            track = self.tracks.get(key)
            if track is None or not track.series:
                continue
            entry: dict = {}
            if len(key) == 2:
                entry["pid"], key = key
            function, file, line, native = key
            entry.update(
                function=function,
                file=file,
                line=line,
                native=native,
                points=[[t, live] for t, live in track.series],
            )
            out.append(entry)
        return out

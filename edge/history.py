"""The last hour of the node, one sample a minute, in memory only.

Each sample is the ops written during the minute (the growth of the outbox's
sequence, an index lookup) and the sync lag at its end (the age of the
oldest op the cloud has not acknowledged). A restart starts a new hour: the
chart is a first look for a technician, the metrics are the record.
"""

from __future__ import annotations

import html
from collections import deque
from dataclasses import dataclass

from aiohttp import web

from .errors import StoreError
from .store import EdgeStore

SAMPLE_EVERY_S = 60.0
KEEP = 60


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    ops: int
    lag_s: float


class History:
    def __init__(self, keep: int = KEEP) -> None:
        self.samples: deque[Sample] = deque(maxlen=keep)
        self._last_seq: int | None = None

    def record(self, at: float, last_seq: int, lag_s: float) -> None:
        """Add a sample; the first one only sets the baseline for ops."""
        if self._last_seq is not None:
            self.samples.append(Sample(at, max(0, last_seq - self._last_seq), lag_s))
        self._last_seq = last_seq

    def sample(self, store: EdgeStore, now: float) -> None:
        try:
            last_seq = store.read(lambda c: c.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0])
            lag = float(store.outbox_summary(int(now * 1000))["oldest_age_s"])
        except StoreError:
            return  # the verdict already says the store is failing; leave a gap
        self.record(now, int(last_seq), lag)


HISTORY = web.AppKey("history", History)


def _polyline(values: list[float], width: int, height: int, top: float) -> str:
    step = width / max(1, KEEP - 1)
    offset = KEEP - len(values)
    return " ".join(
        f"{(offset + i) * step:.1f},{height - (v / top) * height:.1f}" for i, v in enumerate(values)
    )


def render_chart(history: History, width: int = 300, height: int = 60) -> str:
    """Two small inline SVG charts (no script, no external asset)."""
    samples = list(history.samples)
    if not samples:
        return '<p id="chart-empty">The chart fills in over the first minutes after start-up.</p>'
    parts = []
    for key, label, unit, colour in (("ops", "Ops per minute", "", "#2a6"), ("lag_s", "Sync lag", " s", "#c60")):
        values = [float(getattr(s, key)) for s in samples]
        top = max(values) or 1.0
        parts.append(
            f'<figure><figcaption>{html.escape(label)} (last hour; max {max(values):.0f}{unit}, '
            f'now {values[-1]:.0f}{unit})</figcaption>'
            f'<svg id="chart-{key}" xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {width} {height}" '
            f'preserveAspectRatio="none" role="img" aria-label="{html.escape(label)}">'
            f'<rect width="{width}" height="{height}" fill="#f4f4f4"/>'
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
            f'points="{_polyline(values, width, height, top)}"/></svg></figure>'
        )
    return "".join(parts)

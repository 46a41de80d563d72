"""Per-round figures -> series with median, spread and the datapulse/peer ratio.

A *series* is one metric of one server variant at one parameter point (say ``rss_per_stream_kib``
of ``fastmcp/sse`` at ``N=1000``), with one value per round. ``Recorder.finalize`` adds the
median, min/max and quartiles, and for every peer series the ratio datapulse / peer taken round by
round (round r of datapulse against round r of the peer, which ran right after it, see
``run.py``). The ratio compares the same variant when datapulse ran it, else datapulse's first
variant in that scenario; ``ratio_basis`` names which.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

DATAPULSE = "datapulse"


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Series:
    scenario: str
    metric: str
    unit: str
    better: str  # "lower" | "higher" | "" (informational)
    server: str
    variant: str
    param: str
    rounds: list[float | None] = field(default_factory=list)
    median: float | None = None
    min: float | None = None
    max: float | None = None
    q1: float | None = None
    q3: float | None = None
    ratio_basis: str | None = None
    ratio_per_round: list[float | None] = field(default_factory=list)
    ratio_median: float | None = None

    @property
    def target(self) -> str:
        return f"{self.server}/{self.variant}"

    def summarize(self) -> None:
        values = [v for v in self.rounds if v is not None]
        if not values:
            return
        self.median = statistics.median(values)
        self.min, self.max = min(values), max(values)
        self.q1, self.q3 = percentile(values, 25), percentile(values, 75)


class Recorder:
    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self._series: dict[tuple[str, str, str, str, str], Series] = {}

    def record(
        self,
        scenario: str,
        metric: str,
        server: str,
        variant: str,
        round_index: int,
        value: float | None,
        *,
        unit: str,
        better: str = "",
        param: str = "",
    ) -> None:
        key = (scenario, metric, server, variant, param)
        series = self._series.get(key)
        if series is None:
            series = Series(scenario, metric, unit, better, server, variant, param)
            series.rounds = [None] * self.rounds
            self._series[key] = series
        series.rounds[round_index] = None if value is None else round(float(value), 4)

    def series(self) -> list[Series]:
        return list(self._series.values())

    def finalize(self) -> list[dict[str, Any]]:
        everything = self.series()
        for series in everything:
            series.summarize()
        for series in everything:
            if series.server == DATAPULSE:
                continue
            basis = self._datapulse_basis(series)
            if basis is None:
                continue
            series.ratio_basis = basis.target
            ratios: list[float | None] = []
            for ours, theirs in zip(basis.rounds, series.rounds, strict=True):
                ok = ours is not None and theirs is not None and theirs != 0
                ratios.append(round(ours / theirs, 4) if ok else None)  # type: ignore[operator]
            series.ratio_per_round = ratios
            valid = [r for r in ratios if r is not None]
            series.ratio_median = round(statistics.median(valid), 4) if valid else None
        return [asdict(s) for s in everything]

    def _datapulse_basis(self, peer: Series) -> Series | None:
        same = self._series.get((peer.scenario, peer.metric, DATAPULSE, peer.variant, peer.param))
        if same is not None:
            return same
        for (scenario, metric, server, _variant, param), series in self._series.items():
            if (scenario, metric, server, param) == (
                peer.scenario,
                peer.metric,
                DATAPULSE,
                peer.param,
            ):
                return series
        return None

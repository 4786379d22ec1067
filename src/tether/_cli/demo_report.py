"""What ``tether demo`` measured, and how it is summarised (pure code, no I/O).

Each demo client keeps a :class:`ClientRecord`: the ticker messages it received
and the connection events tether reported, each stamped with the demo's
monotonic clock. :func:`summarize_phase` turns the records and a phase's time
span into the numbers of the summary table.

Missing messages are *measured*, never estimated: the ticker numbers its ticks
(``tick = floor(unix_ms / interval)``, the same in every server process), so a
client that received tick 120 and then tick 151 missed 30 ticks. A phase is
charged with the gap that crosses its start (the disconnect it caused).
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from dataclasses import dataclass, field

__all__ = [
    "ClientRecord",
    "PhaseSummary",
    "Stats",
    "format_table",
    "summarize_phase",
]


@dataclass
class ClientRecord:
    """Everything one demo client saw, in order.

    Attributes:
        client_id: 0-based number of the client.
        ticks: (time, tick, seq) of every ticker message received.
        disconnects: (time, code) of every ``Disconnected`` event.
        reconnects: (time, delay, cause_code) of every ``Reconnecting`` event.
        connects: time of every ``Connected`` event.
    """

    client_id: int
    ticks: list[tuple[float, int, int]] = field(default_factory=list)
    disconnects: list[tuple[float, int]] = field(default_factory=list)
    reconnects: list[tuple[float, float, int]] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Stats:
    """min / median / max of a list of seconds (all None when empty)."""

    count: int
    min: float | None
    median: float | None
    max: float | None

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        """Summarise ``values``."""
        if not values:
            return cls(0, None, None, None)
        return cls(len(values), min(values), statistics.median(values), max(values))

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready, rounded to milliseconds."""
        return {
            "count": self.count,
            "min": _ms(self.min),
            "median": _ms(self.median),
            "max": _ms(self.max),
        }


@dataclass(frozen=True)
class PhaseSummary:
    """The numbers of one demo phase.

    Attributes:
        name: machine name (``planned_restart``, ``crash``).
        title: what the table shows.
        expected_code: the close code the phase should produce.
        clients: number of clients.
        codes: close code -> number of disconnects with it, in the phase.
        disconnected: clients that were disconnected at least once.
        reconnected: of those, clients that were connected again by the phase end.
        first_delays: the first delay each disconnected client chose (per close code).
        delays: every reconnect delay chosen in the phase (retries included).
        attempts: number of reconnect attempts in the phase.
        all_back_s: seconds from the phase start until the last client was back
            (None if some client was not back by the phase end).
        received: ticker messages received during the phase.
        missing: ticks not received (gaps in the tick numbers).
        duplicates: ticks received more than once.
    """

    name: str
    title: str
    expected_code: int
    clients: int
    codes: dict[int, int]
    disconnected: int
    reconnected: int
    first_delays: Stats
    delays: Stats
    attempts: int
    all_back_s: float | None
    received: int
    missing: int
    duplicates: int

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (the ``tether demo --json`` phase object)."""
        return {
            "name": self.name,
            "title": self.title,
            "expected_code": self.expected_code,
            "clients": self.clients,
            "codes": {str(code): count for code, count in sorted(self.codes.items())},
            "disconnected": self.disconnected,
            "reconnected": self.reconnected,
            "first_delay_s": self.first_delays.as_dict(),
            "delay_s": self.delays.as_dict(),
            "attempts": self.attempts,
            "all_back_s": _ms(self.all_back_s),
            "received": self.received,
            "missing": self.missing,
            "duplicates": self.duplicates,
        }


def summarize_phase(
    records: list[ClientRecord],
    *,
    name: str,
    title: str,
    expected_code: int,
    start: float,
    end: float,
) -> PhaseSummary:
    """Summarise what happened to ``records`` between ``start`` and ``end`` (seconds)."""

    def within(t: float) -> bool:
        return start <= t < end

    codes: Counter[int] = Counter()
    first_delays: list[float] = []
    delays: list[float] = []
    back_times: list[float] = []
    disconnected = reconnected = received = missing = duplicates = attempts = 0
    all_back = True
    for record in records:
        drops = [(t, code) for t, code in record.disconnects if within(t)]
        codes.update(code for _, code in drops)
        tries = [(t, delay) for t, delay, _ in record.reconnects if within(t)]
        attempts += len(tries)
        delays.extend(delay for _, delay in tries)
        if drops:
            disconnected += 1
            first_drop = drops[0][0]
            after = [delay for t, delay in tries if t >= first_drop]
            if after:
                first_delays.append(after[0])
            last_drop = drops[-1][0]
            back = [t for t in record.connects if within(t) and t >= last_drop]
            if back:
                reconnected += 1
                back_times.append(back[0] - start)
            else:
                all_back = False
        before = [tick for t, tick, _ in record.ticks if t < start]
        during = [tick for t, tick, _ in record.ticks if within(t)]
        received += len(during)
        gap_missing, gap_duplicates = _gaps(before[-1:] + during)
        missing += gap_missing
        duplicates += gap_duplicates
    return PhaseSummary(
        name=name,
        title=title,
        expected_code=expected_code,
        clients=len(records),
        codes=dict(codes),
        disconnected=disconnected,
        reconnected=reconnected,
        first_delays=Stats.of(first_delays),
        delays=Stats.of(delays),
        attempts=attempts,
        all_back_s=max(back_times) if back_times and all_back else None,
        received=received,
        missing=missing,
        duplicates=duplicates,
    )


def _gaps(ticks: list[int]) -> tuple[int, int]:
    """(missing, duplicates) in a sequence of tick numbers in arrival order."""
    missing = duplicates = 0
    for previous, current in itertools.pairwise(ticks):
        if current > previous:
            missing += current - previous - 1
        else:
            duplicates += 1
    return missing, duplicates


def format_table(phases: list[PhaseSummary]) -> str:
    """The summary table printed at the end of the demo."""
    header = (
        "phase", "close codes", "back", "first delay min/med/max", "all delays min/med/max",
        "all back after", "received", "missing",
    )  # fmt: skip
    rows = [header]
    for phase in phases:
        codes = ", ".join(f"{code}x{count}" for code, count in sorted(phase.codes.items()))
        rows.append(
            (
                phase.title,
                codes or "-",
                f"{phase.reconnected}/{phase.disconnected}",
                _triple(phase.first_delays),
                _triple(phase.delays),
                "-" if phase.all_back_s is None else f"{phase.all_back_s:.2f} s",
                str(phase.received),
                str(phase.missing),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]  # noqa: B905
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _triple(stats: Stats) -> str:
    if stats.min is None or stats.median is None or stats.max is None:
        return "-"
    return f"{stats.min:.2f} / {stats.median:.2f} / {stats.max:.2f} s"


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

"""What ``tether demo`` measured, and how it is summarised (pure code, no I/O).

Each demo client keeps a :class:`ClientRecord`: the ticker messages it received
and the connection events tether reported, each stamped with the demo's
monotonic clock. :func:`summarize_phase` turns the records and a phase's time
span into the numbers of the summary table.

Missing messages are *measured* on the sequence numbers the ticker gives the
messages of a session (``seq``), never estimated: a message the server sent
and the client never got leaves a gap in ``seq``; one received twice is a
duplicate; one from an older run arriving after a newer run started is out of
order (:class:`SequenceCheck`). Ticks during which nothing was sent to a
client (the server was down, or a plain WebSocket client was away) are not
missing messages: they are counted apart as ``skipped_ticks``. A ticker handler
numbers from 1, so a session resumed in another process (a new handler) starts
a new *run* at ``seq`` 1 there; runs are told apart by the ``node`` field. A
phase is charged with what happens from its start (the disconnect it caused).

What the sequence numbers cannot show: messages at the very end of a run that
the client never received *and* nobody resent (the next run starts at 1 again).
tether.v1 covers exactly that case with its own per-direction sequence numbers
(``docs/protocol.md``); the crash test with numbered messages both ways
(``tests/integration/test_durable.py``) checks it end to end.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from ._text import display_width, pad

__all__ = [
    "ClientRecord",
    "PhaseSummary",
    "SequenceCheck",
    "Stats",
    "Tick",
    "format_table",
    "say",
    "summarize_phase",
]

#: What ``tether demo --lang ja`` prints for people, by the English text it replaces
#: (``str.format`` fields kept). ``--json`` stays English: it is for scripts.
_JA: dict[str, str] = {
    "starting": "起動中",
    "starting the server": "サーバーを起動中",
    "connecting {n} clients": "{n} クライアントを接続中",
    "steady state": "定常状態",
    "(a) planned restart: SIGHUP, handover, 1012": "(a) 計画的な再起動: SIGHUP、引き継ぎ、1012",
    "(b) crash: SIGKILL, 1006, backoff": "(b) クラッシュ: SIGKILL、1006、バックオフ",
    "(b) crash: server started again": "(b) クラッシュ: サーバーを再び起動",
    "done": "完了",
    "SIGHUP to server pid {pid}": "サーバー pid {pid} に SIGHUP",
    "SIGKILL to server pid {pid}": "サーバー pid {pid} に SIGKILL",
    "replacement pid {pid} is serving": "後継プロセス pid {pid} が稼働中",
    "client {n}: session lost ({reason})": "クライアント {n}: セッション喪失 ({reason})",
    "not every client was back within {s:.0f} s": "{s:.0f} 秒以内に戻らないクライアントがある",
    "phase: {title}": "フェーズ: {title}",
    "client  state       last close              delay chosen       tries  received  missing": (
        "client  状態        最後の切断              選んだ待ち時間     試行   受信      欠落"
    ),
    "not every client came back": "戻らないクライアントがあった",
    "messages were lost or duplicated": "メッセージの欠落または重複があった",
    "(a) planned restart": "(a) 計画的な再起動",
    "(b) crash (SIGKILL)": "(b) クラッシュ (SIGKILL)",
    "phase": "フェーズ",
    "close codes": "切断コード",
    "back": "復帰",
    "resumed": "再開",
    "first delay min/med/max": "最初の待ち 最小/中央/最大",
    "all delays min/med/max": "全待ち 最小/中央/最大",
    "all back after": "全員復帰まで",
    "received": "受信",
    "missing": "欠落",
    "dup": "重複",
    "skipped ticks": "送信なしの tick",
}


def say(lang: str, text: str, **fields: object) -> str:
    """``text`` (an English template) in ``lang``, with ``fields`` filled in."""
    template = _JA.get(text, text) if lang == "ja" else text
    return template.format(**fields) if fields else template


class Tick(NamedTuple):
    """One ticker message as a client received it."""

    time: float
    tick: int
    seq: int
    node: str = ""


@dataclass
class SequenceCheck:
    """Loss, duplicates and reordering in one stream of numbered messages.

    Feed it every message's ``(seq, run)`` in arrival order with :meth:`add`.
    Within a run, sequence numbers start at 1 and go up by one; a message with
    ``seq == 1`` (or a ``run`` not seen yet) starts a new run.

    Attributes:
        received: messages added.
        missing: sequence numbers skipped and not received later (so far).
        duplicates: messages whose (run, seq) was already received.
        out_of_order: messages that arrived after a later one of their run, or
            from a run after a newer run had started.
        runs: runs seen.
    """

    received: int = 0
    missing: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    runs: int = 0
    _last: dict[tuple[str, int], int] = field(default_factory=dict, init=False, repr=False)
    _seen: dict[tuple[str, int], set[int]] = field(default_factory=dict, init=False, repr=False)
    _current: tuple[str, int] | None = field(default=None, init=False, repr=False)
    _run_counts: Counter[str] = field(default_factory=Counter, init=False, repr=False)

    def add(self, seq: int, run: str = "") -> None:
        """Account for one message numbered ``seq`` of run ``run``."""
        self.received += 1
        current = self._current
        if current is None or current[0] != run or (seq == 1 and self._last[current] >= 1):
            if current is not None and current[0] != run and self._run_counts[run]:
                # A message of a run we left already: it came after a newer run's messages.
                self._account((run, self._run_counts[run] - 1), seq, late=True)
                return
            self._run_counts[run] += 1
            current = self._current = (run, self._run_counts[run] - 1)
            self._last[current] = 0
            self._seen[current] = set()
            self.runs += 1
        self._account(current, seq, late=False)

    def finish(self, last_sent: int, run: str = "") -> None:
        """Charge the messages after the last one received, up to ``last_sent``, as missing.

        For streams whose sender reports how far it got (echoed numbered
        messages): the tail a run lost is otherwise invisible.
        """
        self.missing += max(0, last_sent - self.last(run))

    def last(self, run: str = "") -> int:
        """The highest sequence number received in the latest run called ``run`` (0: none)."""
        return self._last.get((run, self._run_counts[run] - 1), 0)

    def _account(self, key: tuple[str, int], seq: int, *, late: bool) -> None:
        seen = self._seen[key]
        if seq in seen:
            self.duplicates += 1
            return
        seen.add(seq)
        last = self._last[key]
        if seq > last:
            self.missing += seq - last - 1
            self._last[key] = seq
            if late:
                self.out_of_order += 1
        else:
            # It was counted in a gap; it did arrive, only late.
            self.missing -= 1
            self.out_of_order += 1

    def counts(self) -> dict[str, int]:
        """The numbers as a dict (received, missing, duplicates, out_of_order, runs)."""
        return {
            "received": self.received,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "runs": self.runs,
        }


@dataclass
class ClientRecord:
    """Everything one demo client saw, in order.

    Attributes:
        client_id: 0-based number of the client.
        ticks: every ticker message received.
        disconnects: (time, code) of every ``Disconnected`` event.
        reconnects: (time, delay, cause_code) of every ``Reconnecting`` event.
        connects: time of every ``Connected`` event.
        resumes: time of every ``Resumed`` event (a tether.v1 session resumed).
        lost: (time, reason) of every ``SessionLost`` event.
    """

    client_id: int
    ticks: list[Tick] = field(default_factory=list)
    disconnects: list[tuple[float, int]] = field(default_factory=list)
    reconnects: list[tuple[float, float, int]] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)
    resumes: list[float] = field(default_factory=list)
    lost: list[tuple[float, str]] = field(default_factory=list)


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
        missing: messages sent and never received (gaps in ``seq``).
        duplicates: messages received more than once.
        out_of_order: messages received after a later one.
        skipped_ticks: ticks for which a client got no message because none
            was sent to it (the server was down or the client away); not a loss.
        resumed: clients whose session was resumed in the phase.
        sessions_lost: ``SessionLost`` reason -> count, in the phase.
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
    out_of_order: int = 0
    skipped_ticks: int = 0
    resumed: int = 0
    sessions_lost: dict[str, int] = field(default_factory=dict)

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
            "out_of_order": self.out_of_order,
            "skipped_ticks": self.skipped_ticks,
            "resumed": self.resumed,
            "sessions_lost": dict(sorted(self.sessions_lost.items())),
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
    disconnected = reconnected = received = attempts = skipped = 0
    totals = Counter[str]()
    lost: Counter[str] = Counter()
    resumed = 0
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
        before = [tick for tick in record.ticks if tick.time < start]
        during = [tick for tick in record.ticks if within(tick.time)]
        received += len(during)
        resumed += any(within(t) for t in record.resumes)
        lost.update(reason for t, reason in record.lost if within(t))
        check = SequenceCheck()
        for tick in before:
            check.add(tick.seq, tick.node)
        at_start = Counter(check.counts())
        for tick in during:
            check.add(tick.seq, tick.node)
        totals.update(Counter(check.counts()) - at_start)
        skipped += _skipped_ticks([tick.tick for tick in before[-1:] + during])
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
        missing=totals["missing"],
        duplicates=totals["duplicates"],
        out_of_order=totals["out_of_order"],
        skipped_ticks=skipped,
        resumed=resumed,
        sessions_lost=dict(lost),
    )


def _skipped_ticks(ticks: list[int]) -> int:
    """Ticks between consecutive received tick numbers (arrival order) that never came."""
    return sum(max(0, current - previous - 1) for previous, current in itertools.pairwise(ticks))


def format_table(phases: list[PhaseSummary], lang: str = "en") -> str:
    """The summary table printed at the end of the demo."""
    header = tuple(say(lang, label) for label in (
        "phase", "close codes", "back", "resumed", "first delay min/med/max",
        "all delays min/med/max", "all back after", "received", "missing", "dup", "skipped ticks",
    ))  # fmt: skip
    rows = [header]
    for phase in phases:
        codes = ", ".join(f"{code}x{count}" for code, count in sorted(phase.codes.items()))
        rows.append(
            (
                say(lang, phase.title),
                codes or "-",
                f"{phase.reconnected}/{phase.disconnected}",
                f"{phase.resumed}/{phase.disconnected}",
                _triple(phase.first_delays),
                _triple(phase.delays),
                "-" if phase.all_back_s is None else f"{phase.all_back_s:.2f} s",
                str(phase.received),
                str(phase.missing),
                str(phase.duplicates),
                str(phase.skipped_ticks),
            )
        )
    # (Display widths: a Japanese character takes two columns.)
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(pad(cell, width) for cell, width in zip(row, widths)) for row in rows]  # noqa: B905
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _triple(stats: Stats) -> str:
    if stats.min is None or stats.median is None or stats.max is None:
        return "-"
    return f"{stats.min:.2f} / {stats.median:.2f} / {stats.max:.2f} s"


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

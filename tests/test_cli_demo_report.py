"""The demo's measurements and summary (``tether/_cli/demo_report.py``), on made-up records."""

from __future__ import annotations

from tether._cli._text import display_width
from tether._cli.demo_report import (
    ClientRecord,
    SequenceCheck,
    Stats,
    Tick,
    format_table,
    say,
    summarize_phase,
)


def _steady(client_id: int, ticks: range, *, start: float = 0.0) -> ClientRecord:
    """A client that received ``ticks`` one per 0.1 s from ``start``."""
    record = ClientRecord(client_id)
    record.connects.append(start)
    record.ticks = [Tick(start + 0.1 * i, tick, i + 1, "a") for i, tick in enumerate(ticks)]
    return record


def _restarted(client_id: int) -> ClientRecord:
    """Ticks 0-49, 1012 at t=5.0, waits 2.0 s, back at 7.0 and gets ticks 70-99 (new session)."""
    record = _steady(client_id, range(50))
    record.disconnects.append((5.0, 1012))
    record.reconnects.append((5.0, 2.0, 1012))
    record.connects.append(7.0)
    record.ticks += [Tick(7.0 + 0.1 * i, 70 + i, i + 1, "b") for i in range(30)]
    return record


def test_stats_of_nothing_is_empty() -> None:
    """No values: count 0 and no min/median/max."""
    assert Stats.of([]) == Stats(0, None, None, None)


def test_stats_min_median_max() -> None:
    """min, median and max of a list of seconds."""
    assert Stats.of([3.0, 1.0, 2.0]) == Stats(3, 1.0, 2.0, 3.0)


def test_phase_counts_codes_and_returns() -> None:
    """Every restarted client is counted as disconnected with 1012 and back."""
    records = [_restarted(0), _restarted(1)]
    phase = summarize_phase(records, name="a", title="A", expected_code=1012, start=4.0, end=11.0)
    assert phase.codes == {1012: 2}
    assert (phase.disconnected, phase.reconnected) == (2, 2)
    assert phase.all_back_s == 3.0


def test_ticks_never_sent_are_skipped_not_missing() -> None:
    """Ticks 50-69 were never sent to the client: 20 skipped ticks, 0 missing messages."""
    phase = summarize_phase(
        [_restarted(0)], name="a", title="A", expected_code=1012, start=4.0, end=11.0
    )
    assert (phase.missing, phase.skipped_ticks, phase.duplicates) == (0, 20, 0)


def test_phase_missing_is_a_gap_in_seq() -> None:
    """Messages seq 6-8 of a run never arrived: 3 missing."""
    record = _steady(0, range(10))
    del record.ticks[5:8]
    phase = summarize_phase([record], name="a", title="A", expected_code=1012, start=0, end=2)
    assert phase.missing == 3


def test_phase_received_counts_only_messages_inside_it() -> None:
    """Messages before the phase start are not counted as received in it."""
    phase = summarize_phase(
        [_restarted(0)], name="a", title="A", expected_code=1012, start=4.0, end=11.0
    )
    assert phase.received == 10 + 30


def test_gap_before_the_phase_is_not_charged_to_it() -> None:
    """A phase starting after the reconnect sees no missing ticks."""
    phase = summarize_phase(
        [_restarted(0)], name="b", title="B", expected_code=1006, start=8.0, end=11.0
    )
    assert phase.missing == 0
    assert phase.disconnected == 0


def test_first_delay_is_the_one_chosen_after_the_close() -> None:
    """first_delays holds one delay per client, the first after its disconnect."""
    record = _steady(0, range(10))
    record.disconnects.append((1.0, 1006))
    record.reconnects += [(1.0, 0.3, 1006), (1.3, 0.9, 1006), (2.2, 1.7, 1006)]
    record.connects.append(3.9)
    phase = summarize_phase([record], name="b", title="B", expected_code=1006, start=0.5, end=5)
    assert phase.first_delays == Stats(1, 0.3, 0.3, 0.3)
    assert phase.delays == Stats(3, 0.3, 0.9, 1.7)
    assert phase.attempts == 3


def test_client_not_back_leaves_all_back_unknown() -> None:
    """If one client never came back, all_back_s is None and reconnected says so."""
    lost = _steady(1, range(50))
    lost.disconnects.append((5.0, 1006))
    phase = summarize_phase(
        [_restarted(0), lost], name="a", title="A", expected_code=1012, start=4.0, end=11.0
    )
    assert (phase.disconnected, phase.reconnected) == (2, 1)
    assert phase.all_back_s is None


def test_duplicates_are_counted_not_hidden() -> None:
    """A tick received twice is a duplicate, not a negative gap."""
    record = _steady(0, range(5))
    record.ticks.append(Tick(0.6, 4, 5, "a"))
    phase = summarize_phase([record], name="a", title="A", expected_code=1012, start=0, end=1)
    assert (phase.missing, phase.duplicates) == (0, 1)


def test_as_dict_is_json_ready() -> None:
    """The JSON form has string code keys and millisecond-rounded seconds."""
    phase = summarize_phase(
        [_restarted(0)], name="a", title="A", expected_code=1012, start=4.0, end=11.0
    )
    data = phase.as_dict()
    assert data["codes"] == {"1012": 1}
    assert data["all_back_s"] == 3.0
    assert data["first_delay_s"] == {"count": 1, "min": 2.0, "median": 2.0, "max": 2.0}


def test_table_has_a_row_per_phase() -> None:
    """The summary table shows each phase with its codes, delays and counts."""
    phase = summarize_phase(
        [_restarted(0)], name="a", title="(a) planned restart", expected_code=1012,
        start=4.0, end=11.0,
    )  # fmt: skip
    table = format_table([phase])
    lines = table.splitlines()
    assert len(lines) == 3
    assert "(a) planned restart" in lines[2]
    assert "1012x1" in lines[2]
    assert "2.00 / 2.00 / 2.00 s" in lines[2]


def test_table_in_japanese_is_japanese_and_aligned_by_display_width() -> None:
    """--lang ja: headers and phase titles in Japanese, columns aligned on screen.

    (Before, tether demo had no --lang although it prints prose, DESIGN.md §9.)
    """
    phase = summarize_phase(
        [_restarted(0)], name="a", title="(a) planned restart", expected_code=1012,
        start=4.0, end=11.0,
    )  # fmt: skip
    lines = format_table([phase], lang="ja").splitlines()
    assert lines[0].startswith("フェーズ")
    assert "(a) 計画的な再起動" in lines[2]
    assert "1012x1" in lines[2]
    # The column after the title starts at the same screen column in every line.
    starts = [display_width(line[: line.index(marker)]) for line, marker in (
        (lines[0], "切断コード"), (lines[2], "1012x1"),
    )]  # fmt: skip
    assert starts[0] == starts[1]


def test_say_fills_in_the_japanese_template_and_keeps_english_otherwise() -> None:
    assert say("ja", "SIGHUP to server pid {pid}", pid=7) == "サーバー pid 7 に SIGHUP"
    assert say("en", "SIGHUP to server pid {pid}", pid=7) == "SIGHUP to server pid 7"


def test_demo_takes_lang() -> None:
    """tether demo --lang ja parses (en by default); --lang fr is a usage error."""
    import argparse

    import pytest

    from tether._cli import demo

    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    assert parser.parse_args(["demo", "--lang", "ja"]).lang == "ja"
    assert parser.parse_args(["demo"]).lang == "en"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--lang", "fr"])


def test_sequence_check_counts_a_clean_stream() -> None:
    """1, 2, 3 in order: nothing missing, duplicated or reordered."""
    check = SequenceCheck()
    for seq in (1, 2, 3):
        check.add(seq, "a")
    assert check.counts() == {
        "received": 3, "missing": 0, "duplicates": 0, "out_of_order": 0, "runs": 1,
    }  # fmt: skip


def test_sequence_check_late_message_fills_its_gap() -> None:
    """1, 3, 2: the gap closes, one message out of order, none missing."""
    check = SequenceCheck()
    for seq in (1, 3, 2):
        check.add(seq)
    assert (check.missing, check.out_of_order) == (0, 1)


def test_sequence_check_duplicate() -> None:
    """1, 2, 2: one duplicate."""
    check = SequenceCheck()
    for seq in (1, 2, 2):
        check.add(seq)
    assert (check.missing, check.duplicates) == (0, 1)


def test_sequence_check_new_node_starts_a_new_run() -> None:
    """a:1-3 then b:1-2 (a resumed session in another process): two runs, nothing missing."""
    check = SequenceCheck()
    for seq, node in ((1, "a"), (2, "a"), (3, "a"), (1, "b"), (2, "b")):
        check.add(seq, node)
    assert (check.runs, check.missing) == (2, 0)


def test_sequence_check_old_run_after_new_is_out_of_order() -> None:
    """a:1, b:1, then a:2 arrives: out of order."""
    check = SequenceCheck()
    for seq, node in ((1, "a"), (1, "b"), (2, "a")):
        check.add(seq, node)
    assert check.out_of_order == 1


def test_sequence_check_finish_charges_the_lost_tail() -> None:
    """Sender got to 5, receiver saw 1-3: 2 missing."""
    check = SequenceCheck()
    for seq in (1, 2, 3):
        check.add(seq)
    check.finish(5)
    assert check.missing == 2


def test_phase_counts_resumed_clients_and_lost_sessions() -> None:
    """Resumed events and SessionLost reasons inside the phase are counted."""
    resumed, lost = _restarted(0), _restarted(1)
    resumed.resumes.append(7.0)
    lost.lost.append((7.0, "expired"))
    phase = summarize_phase(
        [resumed, lost], name="a", title="A", expected_code=1012, start=4.0, end=11.0
    )
    assert (phase.resumed, phase.sessions_lost) == (1, {"expired": 1})

"""What the Autobahn runs expect, as data: exclusions, limit cases, engine divergences.

``docs/compliance.md`` repeats these tables for users; ``test_compliance_doc.py``
checks that the two agree.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

#: Case groups not run by ``make test``, with the reason.
EXCLUDED: dict[str, str] = {
    "12.*": "permessage-deflate is off by default (DESIGN.md §10); opt-in run: "
    "TETHER_AUTOBAHN_COMPRESSION=1 (about 9 minutes)",
    "13.*": "permessage-deflate is off by default (DESIGN.md §10); opt-in run: "
    "TETHER_AUTOBAHN_COMPRESSION=1 (about 9 minutes)",
}

#: Cases whose messages exceed tether's default limits (1 MiB per message, 4096
#: frames per message): at the defaults the peer under test must fail them with
#: 1009 Message Too Big; with the limits raised they must pass.
LIMIT_CASES: tuple[str, ...] = (
    "9.1.4",  # 4 MiB text in one frame
    "9.1.5",  # 8 MiB
    "9.1.6",  # 16 MiB
    "9.2.4",  # 4 MiB binary in one frame
    "9.2.5",  # 8 MiB
    "9.2.6",  # 16 MiB
    "9.3.*",  # 4 MiB text in fragments of 64 B .. 4 MiB (65,536 .. 1 frames)
    "9.4.*",  # 4 MiB binary in fragments of 64 B .. 4 MiB
)

#: Raised limits that make every 9.x case pass: the largest message is 16 MiB,
#: the most fragmented one has 65,536 frames (4 MiB in 64-byte fragments).
RAISED_MAX_SIZE = 16 * 2**20
RAISED_MAX_FRAGMENTS = 65536

#: Cases where the engine (websockets) knowingly differs from Autobahn: case id ->
#: (close code our side sends, reason websockets gives); the why is in docs/compliance.md.
ENGINE_DIVERGENCES: dict[str, tuple[int, str]] = {
    "7.1.5": (1002, "incomplete fragmented message"),
}

#: Verdicts that count as passing (the Autobahn convention).
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}


def matches(case_id: str, patterns: Iterable[str]) -> bool:
    """True if ``case_id`` matches one of the ids or ``*`` globs."""
    return any(fnmatch.fnmatchcase(case_id, pattern) for pattern in patterns)


def default_run_exclusions() -> list[str]:
    """Everything the default-limits run leaves out (it runs the rest)."""
    return [*EXCLUDED, *LIMIT_CASES, *ENGINE_DIVERGENCES]


def failures(results: Sequence[Any]) -> list[str]:
    """One line per case that did not pass: id, verdicts, close code, result text."""
    return [
        f"{r.case_id}: {r.behavior.value}/{r.behavior_close.value} "
        f"code={r.remote_close_code} {r.result} | {r.result_close}"
        for r in results
        if not r.passed
    ]


def verdicts_by_group(results: Sequence[Any]) -> dict[str, Counter[str]]:
    """Count verdicts per top-level case group ("1" .. "10"), for the docs table."""
    groups: dict[str, Counter[str]] = {}
    for r in results:
        group = r.case_id.split(".")[0]
        verdict = r.behavior.value if r.passed else "FAILED"
        groups.setdefault(group, Counter())[verdict] += 1
    return groups

"""What every Autobahn run of cases 1-10 at tether's default limits must show, client or server.

Use it by subclassing :class:`DefaultLimitsRun` in ``test_autobahn_<side>.py`` next to a
module-scoped ``results`` fixture that runs the cases once and returns every result by
case id (passed or not)::

    class TestDefaultLimits(DefaultLimitsRun):
        pass

The exclusions, limit cases and engine divergences are the data in
:mod:`autobahn_support`; ``docs/compliance.md`` explains them.
"""

from __future__ import annotations

from typing import Any

from autobahn_support import (
    ENGINE_DIVERGENCES,
    LIMIT_CASES,
    default_run_exclusions,
    failures,
    matches,
)

#: Cases in groups 1-10 of the suite (there is no group 8; the 216 of 12.x/13.x,
#: permessage-deflate, are left out of the default run).
CASES_1_TO_10 = 301
#: Cases of group 9 (large messages), run again with the limits raised.
CASES_9 = 54


def assert_all_passed(results: dict[str, Any], count: int) -> None:
    """``results`` holds ``count`` cases and every one is OK, NON-STRICT or INFORMATIONAL."""
    assert len(results) == count, len(results)
    failed = failures(list(results.values()))
    # This module is not rewritten by pytest: the message says which cases failed.
    assert failed == [], "\n".join(failed)


class DefaultLimitsRun:
    """The checks on one run of cases 1-10 at the default limits (a ``results`` fixture)."""

    def test_suite_ran_every_case_of_groups_1_to_10(self, results: dict[str, Any]) -> None:
        """The run covers all 301 cases outside the compression groups."""
        assert len(results) == CASES_1_TO_10, len(results)

    def test_every_case_within_the_default_limits_passes(self, results: dict[str, Any]) -> None:
        """Every case but the over-limit ones and 7.1.5 is OK, NON-STRICT or INFORMATIONAL."""
        excluded = default_run_exclusions()
        within = {case: r for case, r in results.items() if not matches(case, excluded)}
        assert_all_passed(within, CASES_1_TO_10 - 25)

    def test_messages_over_the_default_limits_are_refused_with_1009(
        self, results: dict[str, Any]
    ) -> None:
        """The 24 cases with 4-16 MiB messages get 1009 Message Too Big, and nothing else."""
        over = {
            case: r.remote_close_code for case, r in results.items() if matches(case, LIMIT_CASES)
        }
        assert len(over) == 24, over
        assert set(over.values()) == {1009}, over

    def test_close_inside_a_fragmented_message_is_answered_with_1002(
        self, results: dict[str, Any]
    ) -> None:
        """7.1.5: the engine answers a Close between fragments with 1002 (docs/compliance.md)."""
        result = results["7.1.5"]
        seen = (result.remote_close_code, result.remote_close_reason)
        assert seen == ENGINE_DIVERGENCES["7.1.5"], seen

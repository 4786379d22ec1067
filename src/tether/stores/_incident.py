"""Log a failing store backend once per incident, not once per operation.

A Redis server that goes away fails every write of every session until it
returns; logging each failure would bury the one line that matters. An
*incident* starts with the first failure (logged as an error with the cause)
and ends with the next success (logged as a warning: "recovered").
"""

from __future__ import annotations

import logging

__all__ = ["LOGGER", "IncidentLog"]

#: The logger every store reports backend failures on.
LOGGER = logging.getLogger("tether.store")


class IncidentLog:
    """Tracks whether one store's backend is currently failing.

    Args:
        backend: a short name for log lines (``"redis 127.0.0.1:6379/0"``).
        logger: where to log; ``tether.store`` by default.
    """

    def __init__(self, backend: str, *, logger: logging.Logger = LOGGER) -> None:
        self.backend = backend
        self._logger = logger
        self._failing = False

    @property
    def failing(self) -> bool:
        """True between a failure and the next success."""
        return self._failing

    def failed(self, operation: str, error: BaseException) -> None:
        """Record a backend failure; only the first one of an incident is logged."""
        if self._failing:
            return
        self._failing = True
        self._logger.error(
            "session store %s unavailable (%s failed: %s: %s); further failures are "
            "not logged until it recovers",
            self.backend,
            operation,
            type(error).__name__,
            error,
        )

    def succeeded(self) -> None:
        """Record a backend success; ends an incident (logged once)."""
        if self._failing:
            self._failing = False
            self._logger.warning("session store %s recovered", self.backend)

"""Log set-up shared by the long-running commands: text lines or JSON lines on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "setup_logging"]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``t``, ``level``, ``logger``, ``msg``, tether's fields.

    ``ts`` is Unix time; ``t`` is CLOCK_MONOTONIC seconds (``time.monotonic()``), so
    log lines can be compared with events from other processes on the same host.

    Fields passed as ``extra={"tether": {...}}`` are merged into the object, so a
    close line carries ``event``, ``code``, ``clean``, ``cause``, ``explanation``.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            # CLOCK_MONOTONIC seconds, comparable with time.monotonic() in other processes.
            "t": round(time.monotonic(), 6),
            "pid": record.process,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "tether", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(*, json_lines: bool, level: int = logging.INFO) -> None:
    """Send tether's logs to stderr, as text or as JSON lines.

    The engine's own per-connection lines (``tether.server.engine``) are kept to
    warnings: tether logs one line per connect and close itself.
    """
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(message)s",
                                      "%Y-%m-%dT%H:%M:%S")  # fmt: skip
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger("tether")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("tether.server.engine").setLevel(logging.WARNING)

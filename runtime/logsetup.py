"""Logging set-up for the processes: one line per event, text or JSON.

JSON (``log_format = "json"``) is one object per line for journald or a log
shipper. Repeated warnings are rate-limited: the same warning (same logger,
same message template) is let through at most once per interval, and the
next one that passes says how many were suppressed meanwhile, so a cloud
outage costs one line a minute instead of one per retry.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REPEAT_INTERVAL_S = 60.0


class RateLimitFilter(logging.Filter):
    """Lets a repeated WARNING (or worse) through once per ``interval`` seconds."""

    def __init__(self, interval: float = REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._last[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.suppressed = seen[1]
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = (now, 0)
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            line += f" [{suppressed} more like this suppressed]"
        # One line per event, even for a traceback or a message with newlines.
        return line.replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}"
                  + time.strftime("%z", time.localtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            event["suppressed"] = suppressed
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


#: Libraries whose DEBUG output carries the data they handle; held at INFO whatever the level.
QUIET_LIBRARIES = ("aiosqlite", "asyncpg")


def configure(level: str | int = "INFO", fmt: str = "text", *, stream: TextIO | None = None,
              limiter: RateLimitFilter | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one stderr handler in ``fmt``."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    handler.addFilter(limiter or RateLimitFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in QUIET_LIBRARIES:
        # At DEBUG they log every statement with its parameters: names, phones, emails.
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))
    return handler

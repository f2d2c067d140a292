"""The daemons' log lines on stderr: one JSON object per line for the journal and log shippers, or plain
text for a person at a terminal.

    {"ts": "2026-12-03T06:40:01.123Z", "level": "INFO", "logger": "nvfabric.bgp.speaker",
     "event": "established", "peer": "198.51.100.11", "msg": "peer 198.51.100.11: established"}

`ts` is UTC with milliseconds; `event`, `peer`, `family`, `tenant`, `port` appear when the code logging the
record passes them in `extra` (or, for `peer`, when the message starts the way bgp/speaker.py and
bgp/session.py write one: "peer ADDRESS[ (dynamic PREFIX)]: ..."); `exception` holds a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

FORMATS = ("auto", "json", "text")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

_SPEAKER_PEER = re.compile(r"^peer (\S+?)(?: \([^)]*\))?: ")


class JsonLines(logging.Formatter):
    """One JSON object per log record: time, level, logger, message, and the `extra` event fields."""

    FIELDS = ("event", "peer", "family", "tenant", "port")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        for name in self.FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        message = record.getMessage()
        found = _SPEAKER_PEER.match(message) if "peer" not in out else None
        if found:
            out["peer"] = found.group(1)
        out["msg"] = message
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def formatter(log_format: str, stream: TextIO | None = None) -> logging.Formatter:
    """The formatter for `log_format` ("auto": plain text when `stream`, stderr by default, is a terminal,
    JSON lines otherwise: under systemd, in a container, redirected to a file)."""
    if log_format not in FORMATS:
        raise ValueError(f"--log-format: {log_format!r} is not one of {', '.join(FORMATS)}")
    if log_format == "auto":
        stream = sys.stderr if stream is None else stream
        log_format = "text" if stream.isatty() else "json"
    return JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT)

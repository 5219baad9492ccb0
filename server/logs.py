"""Server logging: JSON lines on stdout (journald and log shippers read them as they are).

Configured only by the entry point (`server/__main__.py`). Records logged while a request is
handled carry its id (`current_request_id`, set by the middleware); secrets are never passed
to loggers.
"""

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

# Set by the request-id middleware; each request runs in its own task, so every record logged
# while a request is handled carries its id.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | None) \
                    else str(value)
        request_id = current_request_id.get()
        if request_id is not None:
            entry.setdefault("request_id", request_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log duplicates our middleware's record.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

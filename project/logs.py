"""Structured JSON log lines: one object per line, for log shippers.

A line about a generation carries its id in `generation_id` (pass ``extra={"generation_id": id}``
or mention it as the first ``gen_...`` argument). Prompts, outputs and tokens are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

_GENERATION_ID = re.compile(r"\bgen_[0-9A-Za-z]{22}\b")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": message,
        }
        generation_id = getattr(record, "generation_id", None)
        if generation_id is None:
            found = _GENERATION_ID.search(message)
            generation_id = found.group(0) if found else None
        if generation_id is not None:
            line["generation_id"] = generation_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)

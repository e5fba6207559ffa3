"""Log lines (SPEC 3 `log`): one line per record, every name escaped so that no file name
can forge a line (SPEC 4.5), text or JSON, tracebacks only at debug level."""

from __future__ import annotations

import json
import logging
import sys
import time

from gateway.names import shown


def _one_line(record: logging.LogRecord, debug: bool) -> tuple[str, str | None]:
    """The message with every control character and undecodable byte escaped, so that no
    file name can forge a log line (SPEC 4.5); a traceback only at debug level, else the
    exception's one-line summary."""
    message = shown(record.getMessage())
    trace = None
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        if debug:
            trace = "".join(logging.Formatter().formatException(record.exc_info))
        elif type(exc).__name__ not in message:
            message += f" ({type(exc).__name__}: {shown(str(exc))[:200]})"
    return message, trace


class _SecondFormatter(logging.Formatter):
    """formatTime as logging's own, with the local time of the current second kept: a
    strftime per line was a sixth of a line's cost, a few lines per document (issue 12).
    Formatting runs under the handler's lock, so the one cached second needs none."""

    _second: tuple[int, str | None, str] | None = None

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached = self._second
        if cached is None or cached[0] != second or cached[1] != datefmt:
            text = time.strftime(datefmt or self.default_time_format, self.converter(record.created))
            self._second = cached = (second, datefmt, text)
        if datefmt or not self.default_msec_format:
            return cached[2]
        return self.default_msec_format % (cached[2], record.msecs)


class _TextFormatter(_SecondFormatter):
    def __init__(self, debug: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        message, trace = _one_line(record, self.debug)
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}"
        return line + ("\n" + trace if trace else "")


class _JsonFormatter(_SecondFormatter):
    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        message, trace = _one_line(record, self.debug)
        doc = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
               "logger": record.name, "message": message}
        if trace:
            doc["exception"] = trace
        return json.dumps(doc, ensure_ascii=True)


_forced_debug = False  # --debug: a reload never turns it down


def setup_logging(level: str = "info", fmt: str = "text", *, forced_debug: bool = False) -> None:
    global _forced_debug
    _forced_debug = forced_debug
    if forced_debug:
        level = "debug"
    # Neither format shows where a line was logged from, nor a thread or process: not
    # finding them out saves a walk up the stack per line (the logging HOWTO's
    # "Optimization"; a few lines per document, issue 12).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    debug = level.lower() == "debug"
    handler.setFormatter(_JsonFormatter(debug) if fmt == "json" else _TextFormatter(debug))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def set_level(level: str, fmt: str) -> None:
    """log.level and log.format after a reload (SIGHUP), on the handler set up at start."""
    if _forced_debug:
        return
    root = logging.getLogger()
    debug = level.lower() == "debug"
    for handler in root.handlers:
        if isinstance(handler.formatter, (_TextFormatter, _JsonFormatter)):
            handler.setFormatter(_JsonFormatter(debug) if fmt == "json" else _TextFormatter(debug))
    root.setLevel(level.upper())

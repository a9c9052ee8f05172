"""Console and log-file output for people: one ``[courier STAGE] message``
line per meaningful step on stderr, a full DEBUG log of every run in a file.

Every ``say`` goes through stdlib ``logging`` (logger ``courier.STAGE``).
``configure_logging`` sets the console level (``--quiet`` WARNING, default
INFO, ``--verbose`` DEBUG) and adds the run's log file; third-party Python
loggers and captured ``warnings`` reach the console only at ERROR (they are
all in the file). Without ``configure_logging`` (library use, tests), the
``courier`` logger prints INFO lines to stderr by itself. Every handler
(console and file) masks secrets (``courier_spark.core.redact``), and so does the
traceback of an unexpected error. Standard library only.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from typing import Iterator

from courier_spark.core import fs
from courier_spark.core.redact import mask_text

ROOT_LOGGER = "courier"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (pytest's capsys swaps it per test)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


class ConsoleFormatter(logging.Formatter):
    """``[courier STAGE] msg`` for our loggers; ``[courier] name: LEVEL msg`` for others."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            msg += "\n" + (record.exc_text or self.formatException(record.exc_info))
        if record.name.startswith(ROOT_LOGGER + "."):
            stage = record.name[len(ROOT_LOGGER) + 1:]
            prefix = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
            return f"[courier {stage}] {prefix}{msg}"
        return f"[courier] {record.name}: {record.levelname}: {msg}"


class _ConsoleFilter(logging.Filter):
    """Our own lines at the console level; everyone else's only from ERROR up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == ROOT_LOGGER or record.name.startswith(ROOT_LOGGER + "."):
            return True
        return record.levelno >= logging.ERROR


class MaskSecrets(logging.Filter):
    """On every handler: the message, the traceback and the stack of a record
    with secrets masked (``redact.mask_text``), so a secret echoed inside any
    message (a Hadoop exception, a URI with ``user:password@``) never reaches
    the console or a log file. Masking is idempotent, so a record that passes
    two handlers is fine."""

    _plain = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:   # a bad format string: shown as it is, masked too (logging's own report would not be)
            message = f"{record.msg!s} (arguments: {record.args!r})"
        record.msg, record.args = mask_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._plain.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


def _masked_excepthook(kind, value, tb) -> None:
    """An unexpected error's traceback (printed by Python, not by logging) masked too."""
    sys.stderr.write(mask_text("".join(traceback.format_exception(kind, value, tb))))
    sys.stderr.flush()


_console: logging.Handler | None = None
_file: logging.Handler | None = None


def _default_console() -> None:
    """One console handler on the root logger (installed on first use): our
    INFO lines, everyone else's ERRORs; ``configure_logging`` only sets levels."""
    global _console
    if _console is None:
        _console = _StderrHandler()
        _console.setFormatter(ConsoleFormatter())
        _console.addFilter(_ConsoleFilter())
        _console.addFilter(MaskSecrets())
        _console.setLevel(logging.INFO)
        logging.getLogger().addHandler(_console)
        logging.getLogger(ROOT_LOGGER).setLevel(logging.DEBUG)


def configure_logging(verbosity: int = 0, log_file: str | None = None) -> None:
    """Console at WARNING (-1, ``--quiet``), INFO (0) or DEBUG (1, ``--verbose``);
    ``log_file`` (local path) gets everything at DEBUG. Idempotent."""
    _default_console()
    assert _console is not None
    _console.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    logging.captureWarnings(True)  # warnings -> logger py.warnings -> the file (console: ERROR only)
    sys.excepthook = _masked_excepthook
    for noisy in ("py4j", "matplotlib", "PIL", "urllib3", "fsspec", "asyncio", "botocore", "aiobotocore", "s3fs"):
        logging.getLogger(noisy).setLevel(logging.INFO)  # their DEBUG chatter is not worth the file
    if log_file:
        add_log_file(log_file)


def add_log_file(log_file: str) -> None:
    """Everything at DEBUG to ``log_file`` (a local path), replacing an earlier file."""
    global _file
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    if _file is None or getattr(_file, "baseFilename", None) != os.path.abspath(log_file):
        if _file is not None:
            root.removeHandler(_file)
            _file.close()
        _file = logging.FileHandler(log_file, encoding="utf-8")
        _file.setLevel(logging.DEBUG)
        _file.setFormatter(logging.Formatter(FILE_FORMAT))
        _file.addFilter(MaskSecrets())
        root.addHandler(_file)


def close_log_file() -> None:
    global _file
    if _file is not None:
        logging.getLogger().removeHandler(_file)
        _file.close()
        _file = None


def logger(stage: str) -> logging.Logger:
    _default_console()
    return logging.getLogger(f"{ROOT_LOGGER}.{stage}")


def say(stage: str, msg: str, level: int = logging.INFO) -> None:
    """One ``[courier STAGE] msg`` line (INFO by default)."""
    logger(stage).log(level, msg)


def warn(stage: str, msg: str) -> None:
    say(stage, msg, logging.WARNING)


def debug(stage: str, msg: str) -> None:
    say(stage, msg, logging.DEBUG)


@contextmanager
def step(stage: str, what: str) -> Iterator[None]:
    t0 = time.perf_counter()
    say(stage, f"{what} ...")
    yield
    say(stage, f"{what} done in {time.perf_counter() - t0:.1f}s")


class RunLog:
    """The full DEBUG log of one command, ``<root>/_runs/logs/<UTC time>-<command>.log``.

    On a local root the file is written in place; on a remote root it is
    written to local scratch and copied to the root after every stage and at
    the end (object stores cannot append), then the scratch copy is removed."""

    def __init__(self, logs_dir: str, command: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.final_path = fs.join(logs_dir, f"{stamp}-{command}.log")
        self.remote = not fs.is_local(logs_dir)
        if self.remote:
            fd, self.local_path = tempfile.mkstemp(prefix="courier-run-", suffix=".log")
            os.close(fd)
        else:
            self.local_path = fs.to_local_path(self.final_path)
            os.makedirs(os.path.dirname(self.local_path), exist_ok=True)

    def __enter__(self) -> "RunLog":
        add_log_file(self.local_path)
        return self

    def sync(self) -> None:
        if self.remote and _file is not None:
            _file.flush()
            fs.put_file(self.local_path, self.final_path)

    def exception(self, msg: str) -> None:
        """The current exception's traceback, to the log file (console only with --verbose)."""
        logging.getLogger(f"{ROOT_LOGGER}.run").debug(msg, exc_info=True)

    def __exit__(self, *exc) -> None:
        try:
            self.sync()
        finally:
            close_log_file()
            if self.remote:
                try:
                    os.remove(self.local_path)
                except OSError:
                    pass

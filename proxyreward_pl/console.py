"""What the terminal shows while a stage runs: its own lines (`say`), progress bars, and the final tables.

Everything else a stage prints (vLLM's and Lightning's logs, transformers' loading bars, library warnings, the
training core's output) goes to the stage's log file in the lake while `captured` is active: file descriptors 1
and 2 are pointed at the file, so the output of C code and of child processes (vLLM's engine core, the
training core) goes there too. `verbose=True` captures nothing. An engine shared between stages keeps writing
to the log of the stage that started it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

_terminal: TextIO | None = None
"""The terminal's stdout while output is captured (None: nothing is captured, stdout is the terminal)."""
_terminal_err: TextIO | None = None


def say(*parts: object) -> None:
    """A line for the user: to stdout (the stage's log while captured) and, while captured, to the terminal."""
    text = " ".join(map(str, parts))
    print(text, flush=True)
    if _terminal is not None:
        print(text, file=_terminal, flush=True)


def progress_stream() -> TextIO:
    """Where progress bars draw: the terminal's stderr, even while output is captured."""
    return _terminal_err if _terminal_err is not None else sys.stderr


@contextlib.contextmanager
def captured(log: Path | None, verbose: bool = False) -> Iterator[None]:
    """For the block, fds 1 and 2 (and sys.stdout/sys.stderr on them) append to `log`; `say` still reaches the
    terminal. A nested block writes to its own log, then the outer one's again; `log=None` or `verbose` capture
    nothing. A failure in the outermost block names the log it happened in."""
    global _terminal, _terminal_err
    if log is None or verbose:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    outer = _terminal is not None
    saved_out, saved_err = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if not outer:
        _terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
        _terminal_err = os.fdopen(os.dup(saved_err), "w", buffering=1)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    except BaseException as exc:
        if not getattr(exc, "_proxyreward_log", None):  # the innermost log where it happened
            with contextlib.suppress(AttributeError, TypeError):
                exc._proxyreward_log = str(log)
        if not outer:
            print(f"(the whole output: {getattr(exc, '_proxyreward_log', log)})", file=_terminal_err, flush=True)
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for f in (fd, saved_out, saved_err):
            os.close(f)
        if not outer:
            _terminal.close()
            _terminal_err.close()
            _terminal = _terminal_err = None

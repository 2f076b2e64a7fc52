"""Progress bars for the command-line tools: tqdm on standard error, readable on a terminal and in a log.

On a terminal, tqdm's live bar (count, rate, ETA) redrawn in place. Anywhere else (a log file, a
pipe, a test's captured stream) a redrawn bar would pile carriage returns and bar glyphs into one
endless line, and tqdm's own `disable=None` would print nothing at all; instead each redraw becomes
one plain line, at most one every `log_interval` seconds (default 30), plus a first and a last line:

    converting: 0/262 tensors (0%) [00:00<?, ?tensors/s]
    converting: 262/262 tensors (100%) [00:02<00:00, 121.15tensors/s]
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
_LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"


class _Lines:
    """A write-only stream for tqdm off a terminal: every redraw ('\\r' + text + padding) becomes one line."""

    def __init__(self, stream):
        self._stream = stream
        self._last = None

    def write(self, s: str) -> int:
        line = s.replace("\r", "").rstrip()
        count = line.split(" [", 1)[0]  # the closing redraw repeats the last count: one line per count
        if line and count != self._last:
            self._last = count
            self._stream.write(line + "\n")
            self._stream.flush()
        return len(s)

    def flush(self) -> None:
        self._stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _size(stream) -> tuple[int, int]:
    try:
        return tuple(os.get_terminal_size(stream.fileno()))
    except (AttributeError, ValueError, OSError):
        return (0, 0)


def bar(total: int | None, desc: str, unit: str, *, stream=None, log_interval: float = LOG_INTERVAL_S) -> tqdm:
    """A tqdm bar on `stream` (default: standard error) for `total` units (None: count without a total).
    Call `.update(n)` as work finishes and `.close()` at the end (it prints the final count)."""
    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream):
        # follow the window's size; a terminal that reports none (0 x 0: some CI ptys) gets 100 x 24,
        # else tqdm would draw nothing
        sized = min(_size(stream)) > 0
        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            file=stream,
            mininterval=0.1,
            dynamic_ncols=sized,
            ncols=None if sized else 100,
            nrows=None if sized else 24,
        )
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=_Lines(stream),
        mininterval=log_interval,
        maxinterval=log_interval,
        bar_format=_LOG_FORMAT if total else _LOG_FORMAT_NO_TOTAL,
    )


_LOOP_BARS: dict[str, tqdm] = {}


def _loop(key: str, done: int, total: int, every: int, desc: str, unit: str, stream) -> None:
    bar_ = _LOOP_BARS.get(key)
    if bar_ is None or done <= every:
        if bar_ is not None:
            bar_.close()
        bar_ = _LOOP_BARS[key] = bar(total, desc, unit, stream=stream)
    bar_.update(done - bar_.n)
    if done >= total:
        bar_.close()
        _LOOP_BARS.pop(key, None)


def tokens(done: int, total: int, every: int, *, stream=None) -> None:
    """Progress of a compiled token loop, reported from inside it (`jax.debug.callback`) every
    `every` tokens: `done` of `total`. A report at or below `every` starts a new bar (the next batch)."""
    _loop("tokens", done, total, every, "image tokens", "tokens", stream)


def steps(done: int, total: int, *, stream=None) -> None:
    """Progress of the compiled ODE loop of JanusFlow sampling, reported from inside it after each
    step (`jax.debug.callback`): `done` of `total`. Step 1 starts a new bar (the next batch)."""
    _loop("steps", done, total, 1, "sampling", "steps", stream)

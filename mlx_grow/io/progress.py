"""Progress of long loops: a Rich bar on a terminal (`rich_bar`, the one kind of
bar mlx-grow draws); plain lines otherwise (`StepProgress`).

Progress goes to stderr (results go to stdout). When it is not a terminal (a
log file, CI, `nohup`, a notebook's captured output), a line with the step, the description (e.g. the loss), tokens/s and
the ETA is printed at the first step and then at least every `every` seconds,
from a background thread, so a slow step, compilation or data preparation
never leaves the log silent for longer. Nothing is printed when disabled.
"""

import sys
import threading
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

EVERY_S = 30.0


def rich_bar(*columns, enabled: bool = True) -> Progress:
    """A Rich progress bar on stderr (results go to stdout, bars never do): the
    description, the bar, `columns` (counts, rates), then the time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), *columns, TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class StepProgress:
    def __init__(self, total: int, enabled: bool = True, label: str = "steps", tokens_per_step: int = 0,
                 every: float = EVERY_S, stream=None):
        self.progress = None
        self.total, self.label, self.tokens_per_step, self.every = total, label, tokens_per_step, every
        self.stream = stream if stream is not None else sys.stderr  # results go to stdout, progress never does
        self.desc, self.n = label, 0
        self._start = time.monotonic()
        self._first = None  # (step, time) of the first update: the rate excludes compilation before it
        self._last_line = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if not enabled:
            return
        isatty = getattr(self.stream, "isatty", lambda: False)
        if isatty():
            self.progress = rich_bar(MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
            self.progress.start()
            self.task = self.progress.add_task(label, total=total, rate="")
        else:
            self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._thread.start()

    # --- state ---

    def _rate(self, now: float):
        """(tokens/s or None, seconds per step or None) since the first update."""
        if self._first is None or self.n <= self._first[0] or now <= self._first[1]:
            return None, None
        sps = (now - self._first[1]) / (self.n - self._first[0])
        return (self.tokens_per_step / sps if self.tokens_per_step else None), sps

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        parts = [f"{self.desc}", f"step {self.n}/{self.total}"]
        tok_s, sps = self._rate(now)
        if tok_s is not None:
            parts.append(f"{tok_s:,.0f} tok/s")
        if sps is not None:
            parts.append(f"ETA {_duration(sps * max(0, self.total - self.n))}")
        parts.append(f"elapsed {_duration(now - self._start)}")
        return " · ".join(parts)

    def _emit(self, now: float):
        self._last_line = now
        try:
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed stream: stop talking
            self._stop.set()

    def _tick(self):
        while not self._stop.wait(min(self.every, 1.0)):
            with self._lock:
                now = time.monotonic()
                if now - (self._last_line if self._last_line is not None else self._start) >= self.every:
                    self._emit(now)

    # --- the interface the loops call ---

    def advance_to(self, n: int):
        with self._lock:
            self.n = n
            if self.progress:
                self.progress.update(self.task, completed=n)

    def update(self, n: int, description: str, rate: str = ""):
        now = time.monotonic()
        with self._lock:
            first = self._first is None
            if first:
                self._first = (n, now)
            self.n, self.desc = n, description
            if self.progress:
                tok_s, _ = self._rate(now)
                if not rate and tok_s is not None:
                    rate = f"{tok_s:,.0f} tok/s"
                self.progress.update(self.task, completed=n, description=description, rate=rate)
            elif self._thread is not None and (first or now - self._last_line >= self.every):
                self._emit(now)

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.progress:
            self.progress.stop()
            self.progress = None

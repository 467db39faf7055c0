"""A Rich progress bar for long loops (silent when disabled or not on a terminal)."""

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StepProgress:
    def __init__(self, total: int, enabled: bool = True, label: str = "steps"):
        self.progress = None
        if enabled:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True),  # results go to stdout, bars never do
            )
            self.progress.start()
            self.task = self.progress.add_task(label, total=total, rate="")
        self._last = None

    def advance_to(self, n: int):
        if self.progress:
            self.progress.update(self.task, completed=n)

    def update(self, n: int, description: str, rate: str = ""):
        if self.progress:
            self.progress.update(self.task, completed=n, description=description, rate=rate)

    def close(self):
        if self.progress:
            self.progress.stop()
            self.progress = None

"""Progress bars for the long commands (`compare`, `evaluate`, feature extraction).

One configured `rich.progress.Progress`: it draws on stderr, so stdout keeps
only results, and it is off when stderr is not a terminal (pipes, logs, tests)
or when the user asked for `--quiet`. A disabled one still accepts tasks and
advances, so callers never branch on whether bars are shown.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(quiet: bool = False) -> Progress:
    """A progress display: description, bar, done/total, elapsed and remaining time.

    Use it as a context manager (`with progress_bar(quiet) as bar:`) and add one
    task per loop. Shown only on a terminal and when not `quiet`.
    """
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    )

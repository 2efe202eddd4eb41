"""Progress while waiting: each phase change with the elapsed time, and a bar where one shows.

A tqdm bar (`tqdm.auto`: a widget in Jupyter, text in a terminal) when tqdm is installed and
something will display it; plain lines otherwise (CI logs, files, a pipe), so a log still reads
as a story of what happened and when.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, Literal, TextIO

Mode = Literal["auto", "bar", "lines", "off"]


def _interactive(stream: TextIO) -> bool:
    if "ipykernel" in sys.modules:  # a Jupyter kernel: tqdm.auto draws a widget
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Report the phases of one resource: `update(phase, detail)` on each change, `close()` at
    the end. `steps` are the phases in their expected order; the bar advances along them."""

    def __init__(self, what: str, steps: Sequence[str], mode: Mode | bool = "auto",
                 stream: TextIO | None = None) -> None:
        self.what = what
        self.steps = list(steps)
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self.last: tuple[str, str] | None = None
        self.lines: list[str] = []  # what was reported, for tests and for the caller's record
        if mode is True:
            mode = "auto"
        elif mode is False:
            mode = "off"
        self.mode = mode
        self.bar: Any = None
        if mode in ("auto", "bar") and (mode == "bar" or _interactive(self.stream)):
            try:
                from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]
            except ImportError:  # tqdm is optional (kakehashi[sdk]): lines say the same
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=len(self.steps), desc=what, file=self.stream, leave=True,
                                bar_format="{desc}: {bar} {n_fmt}/{total_fmt} [{elapsed}] {postfix}")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, phase: str, detail: str = "") -> None:
        """Report `phase` (and why, in `detail`) if it differs from the last report."""
        if (phase, detail) == self.last:
            return
        self.last = (phase, detail)
        line = f"{self.what}: {phase}" + (f" ({detail})" if detail else "") + f" after {self.elapsed:.1f} s"
        self.lines.append(line)
        if self.mode == "off":
            return
        if self.bar is not None:
            if phase in self.steps:
                self.bar.n = self.steps.index(phase) + 1
            self.bar.set_postfix_str(phase + (f": {detail}" if detail else ""), refresh=False)
            self.bar.refresh()
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

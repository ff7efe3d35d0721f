"""Terminal output: progress on stderr, colour only where it is wanted.

Progress is drawn only when stderr is a terminal and ``--quiet`` is off; colour additionally
needs ``NO_COLOR`` unset (https://no-color.org).  Nothing here writes to stdout, which carries
``--json -`` output.
"""

from __future__ import annotations

import os
import re
import sys
import time
import unicodedata


def printable(text, limit: int | None = None) -> str:
    """``text`` safe to print on one terminal line: control and format characters (newlines,
    escape sequences, bidirectional overrides, line separators) are written as Python escapes
    (``\\n``, ``\\x1b``, ``\\u202e``), so a name from a model or a path cannot move the cursor,
    recolour the terminal or split a line; longer than ``limit`` characters, it is cut with "…".
    """
    text = str(text)
    if limit is not None:
        text = text[:limit + 1]  # escaping only lengthens: cut the raw text first
    if not text.isprintable():
        text = "".join(c if c == " " or unicodedata.category(c)[0] not in "CZ"
                       else repr(c)[1:-1] for c in text)
    if limit is not None and len(text) > limit:
        text = text[:max(limit - 1, 0)] + "…"
    return text


def colour_enabled(stream=None) -> bool:
    stream = stream or sys.stderr
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()


def paint(text: str, colour: str, stream=None) -> str:
    if not colour_enabled(stream):
        return text
    code = {"red": "31", "green": "32", "yellow": "33", "bold": "1"}[colour]
    return f"\x1b[{code}m{text}\x1b[0m"


# The colour codes ``paint`` writes: the only control sequences a console line may carry.
_PAINT_CODES = re.compile(r"(\x1b\[(?:0|1|31|32|33)m)")


def printable_lines(text) -> str:
    """``printable`` for each line of a multi-line message (tables, notes), keeping the line
    breaks and ``paint``'s colour codes: paths and names inside cannot move the cursor."""
    return "\n".join("".join(part if _PAINT_CODES.fullmatch(part) else printable(part)
                              for part in _PAINT_CODES.split(line))
                      for line in str(text).split("\n"))


class Console:
    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interactive = (not quiet) and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0
        self._open = False

    def info(self, text: str) -> None:
        if not self.quiet:
            self._clear()
            print(printable_lines(text), file=self.stream)

    def progress(self, stage: str, i: int, n: int, what: str = "") -> None:
        """A one-line progress bar, redrawn at most 10 times a second."""
        if not self.interactive:
            return
        now = time.monotonic()
        if i < n and now - self._last < 0.1:
            return
        self._last = now
        width = 24
        filled = int(width * i / n) if n else width
        bar = "#" * filled + "-" * (width - filled)
        line = f"\r{stage} [{bar}] {i}/{n} {what}"[:100]
        self.stream.write(line.ljust(100))
        self.stream.flush()
        self._open = True
        if i >= n:
            self._clear()

    def _clear(self) -> None:
        if self._open:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self._open = False


def text_table(headers: list[str] | None, rows: list[list], footer: list | None = None,
               indent: str = "") -> str:
    """The one plain-text table: every column left-aligned to its widest cell, two spaces apart.

    Layout: the header, a rule of dashes, the rows, then (given a ``footer``) another rule and the
    footer row (a total).  Without ``headers`` there is neither header nor rule, only the rows.
    Cells are printed with ``str``; escaping names from a model is the caller's business, since
    only the caller knows which cells came from the model.  Every line starts with ``indent``.
    """
    every = ([headers] if headers else []) + list(rows) + ([footer] if footer else [])
    widths = [max(len(str(c)) for c in col) for col in zip(*every)]

    def line(row) -> str:
        return indent + "  ".join(str(c).ljust(w) for c, w in zip(row, widths))

    rule = indent + "  ".join("-" * w for w in widths)
    out = [line(headers), rule] if headers else []
    out += [line(row) for row in rows]
    if footer:
        out += [rule, line(footer)]
    return "\n".join(out)

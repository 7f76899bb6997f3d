"""Checks shared by the bad-input tests of the command line: one error line, no traceback."""

from __future__ import annotations

__all__ = ["one_error_line"]


def one_error_line(err: str, prefix: str) -> str:
    """The one line of ``err`` (a command's stderr) that starts with ``prefix`` (``"cepo train:"``); asserts that
    there is exactly one and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err
    return lines[0]

"""Errors meant for the user: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class ConvUNeXtError(Exception):
    """A problem with the user's input (a file, a folder, a config value) rather than a bug in convunext.

    The message is one line that names the file or value and says what is wrong with it.
    """


def error_text(error: BaseException) -> str:
    """A third-party error's message on one line (whitespace collapsed; the class name when it has none), to quote
    inside a :class:`ConvUNeXtError`'s message."""
    return " ".join(str(error).split()) or type(error).__name__

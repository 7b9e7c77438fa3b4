"""Errors a user can act on: the CLI prints them as one line, without a traceback."""

from __future__ import annotations

import re


class FgbgError(Exception):
    """A user-facing error: what was wrong, naming the file and what was expected."""


class BadSample(FgbgError):
    """One sample's file is missing, undecodable or of the wrong size."""

    def __init__(self, source: str, member: str, what: str):
        super().__init__(": ".join(part for part in (source, member, what) if part))  # (a user's own image has no source)
        self.source, self.member, self.what = source, member, what


def find_bad_sample(error: BaseException) -> str | None:
    """The BadSample message inside a chain of Ray errors (causes, per-worker failures), if there is one.

    Ray Data passes a task's exception on as text, so the message is also looked for in the text.
    """
    todo, seen = [error], set()
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, BadSample):
            return str(e)
        match = _BAD_SAMPLE_TEXT.search(str(e))
        if match:
            return match.group(1).strip()
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        for value in vars(e).values() if hasattr(e, "__dict__") else []:
            if isinstance(value, dict):
                todo += [v for v in value.values() if isinstance(v, BaseException)]
            elif isinstance(value, BaseException):
                todo.append(value)
    return None


_BAD_SAMPLE_TEXT = re.compile(r"fgbg\.errors\.BadSample: (.+)")

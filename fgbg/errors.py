"""Errors a user can act on: the CLI prints them as one line, without a traceback."""


class FgbgError(Exception):
    """A user-facing error: what was wrong, naming the file and what was expected."""


class BadSample(FgbgError):
    """One sample's file is missing, undecodable or of the wrong size."""

    def __init__(self, source: str, member: str, what: str):
        super().__init__(f"{source}: {member}: {what}")
        self.source, self.member, self.what = source, member, what

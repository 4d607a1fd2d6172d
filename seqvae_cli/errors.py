"""The one exception type users see: a message that says what was wrong and how to fix it."""


class SeqvaeError(Exception):
    """A user-actionable error; the CLI prints it as one line and exits with status 2."""

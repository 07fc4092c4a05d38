"""The one exception type a user can see."""


class ErnerfError(RuntimeError):
    """A problem the user can fix: the message says what was wrong and what to do."""

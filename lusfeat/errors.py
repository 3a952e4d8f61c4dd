"""The one exception type for user mistakes: commands print its message, never a traceback."""


class LusfeatError(Exception):
    """Bad input or configuration; the message says what is wrong and what to do."""

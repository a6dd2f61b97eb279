"""The one exception type for user errors: the CLI prints its message as one line, no traceback."""


class EdgesegError(Exception):
    """Bad input from a user (file, value, option). The message names it and says what to do."""

"""The error type of user mistakes: the CLI prints its message as one line and exits non-zero."""


class KWSError(Exception):
    """A problem the user can fix (bad path, bad file, bad option); never shown with a traceback."""

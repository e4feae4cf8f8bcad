"""The error types of user mistakes (torch-free): the CLI prints their message as one line and exits non-zero."""


class KWSError(Exception):
    """A problem the user can fix (bad path, bad file, bad option); never shown with a traceback."""


class ConfigError(KWSError, ValueError):
    """A configuration value is invalid: a config field, a command-line option, a model's settings (reported to the
    user as a one-line error; raised by training, export and the runtime alike)."""

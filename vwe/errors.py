"""Errors a user can act on: the message names the file or key and the problem, and the CLI prints it alone."""


class VweError(Exception):
    """Base class: caught by the `vwe` command and printed as one line (no traceback unless --verbose)."""


class ConfigError(VweError, ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


class DataError(VweError, ValueError):
    """A dataset file that is missing, unreadable or inconsistent; the message names the file."""

"""Errors a user can act on: the message names the file or key and the problem, and the CLI prints it alone."""
from __future__ import annotations

import re


class VweError(Exception):
    """Base class: caught by the `vwe` command and printed as one line (no traceback unless --verbose)."""


class ConfigError(VweError, ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


class DataError(VweError, ValueError):
    """A dataset file that is missing, unreadable or inconsistent; the message names the file."""


# How a VweError raised in a Ray task or actor reads in the error Ray re-raises on the driver: Ray keeps the remote
# traceback as text, whose last line is "vwe.errors.DataError: <message>".
_REMOTE = re.compile(r"^vwe\.errors\.(ConfigError|DataError): (.+)$", re.MULTILINE)


def user_error(err: BaseException) -> VweError | None:
    """The VweError behind `err`, if any: `err` itself, one in its chain of causes (Ray's `cause`, Ray Train's
    `worker_failures`), or one named in the text of a Ray error that wraps a remote traceback."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, VweError):
            return current
        match = _REMOTE.findall(str(current))
        if match:
            kind, message = match[-1]
            return (ConfigError if kind == "ConfigError" else DataError)(message.strip())
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
        todo += list(getattr(current, "worker_failures", {}).values())
    return None

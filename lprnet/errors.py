"""The project's exception types for bad input: what a stage or the CLI reports as one line and exit status 1.

A user's mistake (a wrong key or value in params.yaml, a missing or unreadable file, an artifact of the wrong kind)
raises `InputError` (or `MissingFileError`) with a message that names the file, key or value. Anything else is a bug
and keeps its traceback: `lprnet.pipeline.stage.run` and the CLI catch these types only. Both subclass the builtin
types they replace, so `except ValueError` / `except FileNotFoundError` in a caller still catch them.
"""


class InputError(ValueError):
    """A file, key or value that is wrong; the message names it."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the caller named does not exist."""

"""The error type for mistakes in what a user gave (a file, a folder, a setting).

The command line prints such an error as one line and exits with code 2; ``--debug`` shows the
traceback. Anything else that goes wrong is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; the message names the file or setting and the problem."""


class DatasetFolderError(UserError, FileExistsError):
    """A dataset folder holds something other than the dataset asked for; it was not touched."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder that the given settings point at does not exist."""


class InvalidInputError(UserError, ValueError):
    """A setting, or a line of a file the user gave, is not valid; the message says where."""


__all__ = ["DatasetFolderError", "InvalidInputError", "MissingInputError", "UserError"]

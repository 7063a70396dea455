"""One error taxonomy. Every message says what is wrong and how to fix it.

The CLI maps each class to an exit code and prints the message on one line.
"""

from __future__ import annotations


class ArenaError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code = 1


class ConfigError(ArenaError, ValueError):
    """A parameter, option or config key has a value that is not allowed."""

    exit_code = 2


class DatasetError(ArenaError):
    """A dataset is missing, corrupt, or cannot be downloaded."""

    exit_code = 3


class ModelFileError(ArenaError):
    """A model file is missing, corrupt, unsafe (pickle) or inconsistent."""

    exit_code = 4


class IncompatibleError(ArenaError):
    """Two valid things do not fit together (a model and a dataset, a spec and a model)."""

    exit_code = 5

"""One family of errors, so users can catch ``EnhancedDMError`` and read what went wrong and where.

Every message names the file (or key), the line or obs key where there is one, what was found and
what was expected.
"""

from __future__ import annotations

__all__ = [
    "AnnotationFileError",
    "ConfigError",
    "DataFileError",
    "EnhancedDMError",
    "FittingError",
    "NonFiniteOutputError",
]


class EnhancedDMError(Exception):
    """Base class of every error enhanced-dm raises on purpose."""


class DataFileError(EnhancedDMError, ValueError):
    """A data file (h5ad) or in-memory AnnData is missing, unreadable or holds values we cannot use."""


class AnnotationFileError(EnhancedDMError, ValueError):
    """An annotation file (GMT, compartment table, network) is malformed.

    The message starts with ``<path>:<line>:`` when a line is to blame.
    """

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        location = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{location}: {message}")
        self.path = str(path)
        self.line = line


class ConfigError(EnhancedDMError, ValueError):
    """Options that contradict each other or name something that does not exist."""


class FittingError(EnhancedDMError, RuntimeError):
    """Statistics cannot be fitted (for example an empty train split)."""


class NonFiniteOutputError(EnhancedDMError, FloatingPointError):
    """A transform produced NaN or inf while ``nan_policy="raise"``."""

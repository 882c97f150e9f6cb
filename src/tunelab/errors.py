"""The one error type a user sees: a single line naming the file, row or key."""

from __future__ import annotations


class TunelabError(Exception):
    """A user-facing failure. Stages print ``str(err)`` on one line and exit 1."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")

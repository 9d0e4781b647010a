"""Errors raised by the storage layer."""

from __future__ import annotations


class StoreError(Exception):
    """A storage operation failed."""


class InvalidExtension(StoreError, ValueError):
    """An extension number, name, password or limit is not acceptable."""


class ExtensionExists(StoreError):
    """An extension with this number already exists."""

    def __init__(self, number: str) -> None:
        super().__init__(f"extension {number} already exists")
        self.number = number


class ExtensionNotFound(StoreError):
    """No extension has this number."""

    def __init__(self, number: str) -> None:
        super().__init__(f"extension {number} does not exist")
        self.number = number

"""The protocol core's error type: a parse or validation failure with the SIP status it maps to."""

from __future__ import annotations


class SipError(ValueError):
    """A message (or part of one) that cannot be accepted.

    ``status`` is the response a server should send for a request carrying this fault (400 for
    malformed syntax, 505 for an unknown version, ...); ``reason`` is a short phrase saying what is
    wrong, fit for a reason phrase (printable ASCII, no CR/LF).
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

"""Digest HA1 computation: the only form in which extension passwords are kept."""

from __future__ import annotations

import hashlib

_ALGORITHMS = {"MD5": "md5", "SHA-256": "sha256"}


def compute_ha1(number: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """Hex digest of ``number:realm:password`` (RFC 7616 HA1) for MD5 or SHA-256."""
    name = _ALGORITHMS.get(algorithm.upper())
    if name is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(name, f"{number}:{realm}:{password}".encode()).hexdigest()

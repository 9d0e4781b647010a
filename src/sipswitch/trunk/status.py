"""Reading the status file the running server writes (``DATA/trunks.json``) and showing it as
the table of ``sipswitch trunk list``; trunks in the settings but not in the file (the server
is not running, or was started before they were added) are listed as such."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config.settings import Settings
from .manager import STATUS_FILE

MAX_STATUS_BYTES = 16 * 1024 * 1024


def read_status(path: Path) -> dict[str, Any] | None:
    """The status document, or None when there is none (or it cannot be read)."""
    try:
        if path.stat().st_size > MAX_STATUS_BYTES:
            return None
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _seconds(value: float) -> str:
    value = max(0, int(value))
    if value < 120:
        return f"{value} s"
    if value < 7200:
        return f"{value // 60} min"
    return f"{value // 3600} h"


def state_of(entry: dict[str, Any], now: float) -> tuple[str, str]:
    """(state, detail) of one trunk entry for people."""
    details: list[str] = []
    if entry.get("problem"):
        return ("unresolved" if entry.get("address") is None else "unusable"), str(
            entry["problem"]
        )
    registration = entry.get("registration")
    health = entry.get("health")
    if registration is not None:
        state = str(registration)
        if registration == "failed":
            state = "backing off"
            details.append(str(entry.get("registration_detail") or "failed"))
            retry = entry.get("retry_at")
            if isinstance(retry, int | float):
                details.append(f"retry in {_seconds(retry - now)}")
        elif registration == "registered":
            expires = entry.get("expires_at")
            if isinstance(expires, int | float):
                details.append(f"expires in {_seconds(expires - now)}")
        elif entry.get("registration_detail"):
            details.append(str(entry["registration_detail"]))
        if health == "down":
            state += ", down"
            details.append(f"OPTIONS: {entry.get('health_detail') or 'no answer'}")
    elif health is not None:
        state = str(health)
        if entry.get("health_detail"):
            details.append(f"OPTIONS: {entry['health_detail']}")
    else:
        state = "not checked"
    if entry.get("tls_detail"):
        details.append(f"TLS: {entry['tls_detail']}")
    return state, "; ".join(details)


def _running(document: dict[str, Any]) -> bool:
    pid = document.get("pid")
    if document.get("stopped") or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by another user
    return True


def _limit(value: object) -> str:
    return "-" if value is None else str(value)


def table(settings: Settings, now: float, path: Path | None = None) -> list[str]:
    """The lines of ``sipswitch trunk list``."""
    path = path or settings.data_dir / STATUS_FILE
    document = read_status(path)
    entries: dict[str, dict[str, Any]] = {}
    if document is not None:
        for entry in document.get("trunks") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                entries[entry["name"]] = entry
    rows = [("NAME", "KIND", "ADDRESS", "STATE", "CALLS IN/OUT", "LIMITS IN/OUT", "DETAIL")]
    for trunk in settings.trunks:
        entry = entries.get(trunk.name)
        where = f"{trunk.transport}:{trunk.host}:{trunk.port}"
        limits = f"{_limit(trunk.max_incoming)}/{_limit(trunk.max_outgoing)}"
        if entry is None:
            state, detail, calls = "not running", "", "-"
        else:
            state, detail = state_of(entry, now)
            calls = f"{entry.get('calls_in', 0)}/{entry.get('calls_out', 0)}"
        rows.append((trunk.name, trunk.kind, where, state, calls, limits, detail))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in rows
    ]
    lines = [line.rstrip() for line in lines]
    if document is None and settings.trunks:
        lines.append(f"(no status in {path}: the server is not running)")
    elif document is not None and not _running(document):
        lines.append("(the server is not running: the last state it wrote)")
    if not settings.trunks:
        lines = ["No trunks are configured ([[trunks]] in the settings)."]
    return lines

"""``sipswitch trunk list`` from the status file: states for people, and what it says when the
server is not running."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sipswitch.config import load_settings
from sipswitch.trunk.status import table

CONFIG = """
[[trunks]]
name = "carrier"
kind = "line"
host = "192.0.2.1"
username = "5551000"
password = "x"
max_incoming = 2

[[trunks]]
name = "hq"
host = "192.0.2.10"
"""


def _entry(name: str, kind: str, **values: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "registration": None,
        "registration_detail": "",
        "retry_at": None,
        "expires_at": None,
        "health": None,
        "health_detail": "",
        "problem": "",
        "calls_in": 0,
        "calls_out": 0,
    }
    entry.update(values)
    return entry


def _lines(tmp_path: Path, document: dict[str, Any] | None, now: float = 1000.0) -> list[str]:
    config = tmp_path / "sipswitch.toml"
    config.write_text(CONFIG)
    settings = load_settings(config, tmp_path / "data")
    if document is not None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        (settings.data_dir / "trunks.json").write_text(json.dumps(document))
    return table(settings, now)


def test_without_a_status_file(tmp_path: Path) -> None:
    lines = _lines(tmp_path, None)
    assert lines[0].split()[:4] == ["NAME", "KIND", "ADDRESS", "STATE"]
    assert "not running" in lines[1] and "2/-" in lines[1]
    assert lines[-1].startswith("(no status in ")


def test_states_of_a_running_server(tmp_path: Path) -> None:
    document = {
        "pid": os.getpid(),
        "stopped": False,
        "trunks": [
            _entry(
                "carrier",
                "line",
                registration="failed",
                registration_detail="403 Forbidden",
                retry_at=1040.0,
                calls_in=1,
            ),
            _entry("hq", "trunk", health="down", health_detail="no answer", calls_out=3),
        ],
    }
    lines = _lines(tmp_path, document)
    assert "backing off" in lines[1] and "403 Forbidden; retry in 40 s" in lines[1]
    assert "1/0" in lines[1]
    assert "down" in lines[2] and "OPTIONS: no answer" in lines[2] and "0/3" in lines[2]
    assert len(lines) == 3  # nothing about the server not running


def test_a_stale_file_is_marked(tmp_path: Path) -> None:
    document = {
        "pid": 2**22 + 12345,  # above the kernel's pid limit: no such process
        "stopped": False,
        "trunks": [_entry("carrier", "line", registration="registered", expires_at=4600.0)],
    }
    lines = _lines(tmp_path, document)
    assert "registered" in lines[1] and "expires in 60 min" in lines[1]
    assert "not running" in lines[2]  # hq is not in the file
    assert lines[-1] == "(the server is not running: the last state it wrote)"


def test_no_trunks(tmp_path: Path) -> None:
    config = tmp_path / "sipswitch.toml"
    config.write_text("")
    assert table(load_settings(config, tmp_path / "data"), 0.0) == [
        "No trunks are configured ([[trunks]] in the settings)."
    ]

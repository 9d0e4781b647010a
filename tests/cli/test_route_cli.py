"""`sipswitch route test` shows which rule a number meets and what it dials."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipswitch.cli.main import main

CONFIG = """
[[groups]]
number = "600"
members = ["201"]

[[dialplan]]
prefix = "8"
strip = 1

[lists]
deny_callers = ["666"]
"""


def test_route_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "sipswitch.toml"
    config.write_text(CONFIG)
    common = ["--config", str(config), "--data", str(tmp_path / "data")]
    assert main(["ext", "add", "201", "--password", "secret-pw-1", *common]) == 0
    capsys.readouterr()
    assert main(["route", "test", "8201", *common]) == 0
    assert capsys.readouterr().out.strip() == "201: extension 201 (rule prefix '8')"
    assert main(["route", "test", "600", *common]) == 0
    assert "ring group 600" in capsys.readouterr().out
    assert main(["route", "test", "201", "--from", "6661", *common]) == 1
    assert "reject 403 Caller not allowed" in capsys.readouterr().out

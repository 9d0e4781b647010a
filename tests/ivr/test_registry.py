"""The script registry: shipped defaults, numbers bound to scripts, reload on change in
virtual time, and a broken edit that is reported while the last good version keeps serving."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from sipswitch.ivr.registry import BUILTIN_SCRIPTS, ScriptRegistry
from sipswitch.sip.clock import VirtualClock
from tests.ivr.helpers import has_prompt, script

GOOD = script('<action name="one" method="play"><voice>welcome</voice></action>')
GOOD_TWO = script(
    '<action name="one" method="play"><voice>welcome</voice></action>\n'
    '<action name="two" method="hangup"/>'
)
BROKEN = script('<action name="one" method="play"><voice>welcome</voice></action>\n<oops>')


def write(path: Path, text: str, bump: int = 0) -> None:
    """Write a file and move its mtime forward by ``bump`` seconds (coarse file systems)."""
    path.write_text(text, encoding="utf-8")
    if bump:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


@pytest.fixture
def xml_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "xml"
    folder.mkdir()
    return folder


def registry(xml_dir: Path, clock: VirtualClock | None = None, **options: object) -> ScriptRegistry:
    numbers = options.pop("numbers", {"800": "auto-attendant.xml", "801": "menu.xml"})
    return ScriptRegistry(
        xml_dir,
        numbers,  # type: ignore[arg-type]
        prompt_exists=options.pop("prompt_exists", has_prompt),  # type: ignore[arg-type]
        clock=clock or VirtualClock(),
        **options,  # type: ignore[arg-type]
    )


def test_the_shipped_auto_attendant_serves_800_out_of_the_box(tmp_path: Path) -> None:
    reg = registry(tmp_path / "no-such-folder", numbers={"800": "auto-attendant.xml"})
    assert reg.load() == []
    flow = reg.flow_for_number("800")
    assert flow is not None and flow.file == str(BUILTIN_SCRIPTS / "auto-attendant.xml")
    assert reg.flow_for_number("801") is None
    assert reg.names == ["auto-attendant.xml"] and reg.unbound_numbers() == {}


def test_scripts_in_the_folder_are_bound_and_win_over_shipped_ones(
    xml_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(xml_dir / "menu.xml", GOOD)
    write(xml_dir / "auto-attendant.xml", GOOD_TWO)
    (xml_dir / "notes.txt").write_text("not a script")
    (xml_dir / "sub.xml").mkdir()
    reg = registry(xml_dir, numbers={"800": "auto-attendant.xml", "801": "menu.xml", "9": "x.xml"})
    with caplog.at_level(logging.ERROR, logger="sipswitch.ivr"):
        assert reg.load() == []
    menu, attendant = reg.flow_for_number("801"), reg.flow_for_number("800")
    assert menu is not None and menu.file == str(xml_dir / "menu.xml")
    assert attendant is not None and len(attendant.actions) == 2
    assert reg.unbound_numbers() == {"9": "x.xml"}
    assert f"ivr.numbers: 9 is bound to x.xml, which is neither in {xml_dir} nor shipped" in (
        caplog.text
    )


def test_a_changed_file_is_reloaded_by_polling_in_virtual_time(xml_dir: Path) -> None:
    clock = VirtualClock()
    write(xml_dir / "menu.xml", GOOD)
    reg = registry(xml_dir, clock)
    reg.load()
    reg.start()
    write(xml_dir / "menu.xml", GOOD_TWO, bump=1)
    clock.advance(1.9)
    assert len(reg.flow("menu.xml").actions) == 1  # type: ignore[union-attr]
    clock.advance(0.1)
    assert len(reg.flow("menu.xml").actions) == 2  # type: ignore[union-attr]
    write(xml_dir / "new.xml", GOOD)
    clock.advance(2)
    assert reg.flow("new.xml") is not None
    reg.stop()
    write(xml_dir / "menu.xml", GOOD, bump=2)
    clock.advance(10)
    assert len(reg.flow("menu.xml").actions) == 2  # type: ignore[union-attr]
    assert clock.pending == 0


def test_a_broken_edit_is_reported_and_the_last_good_version_keeps_serving(
    xml_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock()
    path = xml_dir / "menu.xml"
    write(path, GOOD_TWO)
    reg = registry(xml_dir, clock)
    reg.load()
    reg.start()
    good = reg.flow_for_number("801")
    write(path, BROKEN, bump=1)
    with caplog.at_level(logging.ERROR, logger="sipswitch.ivr"):
        clock.advance(2)
    assert reg.flow_for_number("801") is good
    assert list(reg.errors) == ["menu.xml"]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"{path}:4:3: not well-formed XML: mismatched tag",
        f"{path}: the previous version keeps serving",
    ]
    # The same broken file is not reported again at every poll.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="sipswitch.ivr"):
        clock.advance(10)
    assert caplog.records == []
    # Fixed: the new version serves and the error is gone.
    write(path, GOOD, bump=2)
    clock.advance(2)
    fixed = reg.flow_for_number("801")
    assert fixed is not None and fixed is not good and len(fixed.actions) == 1
    assert reg.errors == {}


def test_a_script_broken_from_the_start_serves_nothing_or_the_shipped_one(
    xml_dir: Path,
) -> None:
    write(xml_dir / "menu.xml", BROKEN)
    write(xml_dir / "auto-attendant.xml", script('<action name="a" method="dance"/>'))
    reg = registry(xml_dir)
    errors = reg.load()
    assert sorted(e.first.position.file for e in errors) == [
        str(xml_dir / "auto-attendant.xml"),
        str(xml_dir / "menu.xml"),
    ]
    assert reg.flow_for_number("801") is None
    shipped = reg.flow_for_number("800")
    assert shipped is not None and shipped.file == str(BUILTIN_SCRIPTS / "auto-attendant.xml")
    assert reg.unbound_numbers() == {"801": "menu.xml"}


def test_a_removed_file_stops_serving(xml_dir: Path) -> None:
    write(xml_dir / "menu.xml", GOOD)
    write(xml_dir / "auto-attendant.xml", GOOD)
    reg = registry(xml_dir)
    reg.load()
    (xml_dir / "menu.xml").unlink()
    (xml_dir / "auto-attendant.xml").unlink()
    reg.poll()
    assert reg.flow("menu.xml") is None
    attendant = reg.flow("auto-attendant.xml")
    assert attendant is not None and attendant.file.startswith(str(BUILTIN_SCRIPTS))


def test_a_prompt_that_appears_later_lets_the_script_load(xml_dir: Path) -> None:
    prompts = {"welcome"}
    write(
        xml_dir / "menu.xml", script('<action name="a" method="play"><voice>new</voice></action>')
    )
    reg = registry(xml_dir, prompt_exists=prompts.__contains__, builtin_dir=None)
    [error] = reg.load()
    assert error.first.message == "prompt 'new' does not exist in the voice folder"
    assert reg.poll() == []  # still missing: not reported again
    prompts.add("new")
    assert reg.poll() == []
    assert reg.flow("menu.xml") is not None and reg.errors == {}


def test_a_failing_poll_keeps_polling(xml_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = VirtualClock()
    reg = registry(xml_dir, clock)
    reg.load()
    calls: list[int] = []

    def failing_poll() -> list[object]:
        calls.append(1)
        raise OSError("disk gone")

    monkeypatch.setattr(reg, "poll", failing_poll)
    reg.start()
    clock.advance(6)
    assert len(calls) == 3
    reg.stop()

"""``sipswitch ivr check`` and ``sipswitch ivr simulate`` end to end through ``main([...])``,
and the ``[ivr]`` settings they read."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipswitch.cli.main import main
from sipswitch.config import ConfigError, load_settings
from sipswitch.ivr.registry import BUILTIN_SCRIPTS
from tests.ivr.helpers import FIXTURES, PROMPTS, script

ATTENDANT = BUILTIN_SCRIPTS / "auto-attendant.xml"


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./sipswitch.toml of the repository


@pytest.fixture
def voice(tmp_path: Path) -> Path:
    folder = tmp_path / "voice"
    folder.mkdir()
    for name in PROMPTS:
        (folder / f"{name}.wav").write_bytes(b"RIFF")
    return folder


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_passes_good_scripts(capsys: pytest.CaptureFixture[str], voice: Path) -> None:
    spec = FIXTURES / "spec-example.xml"
    code, out, err = run(capsys, "ivr", "check", str(spec), str(ATTENDANT), "--voice", str(voice))
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"OK: {spec} (5 actions)", f"OK: {ATTENDANT} (9 actions)"]


def test_check_reports_every_error_and_fails(
    capsys: pytest.CaptureFixture[str], voice: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text(
        script(
            '<action name="a" method="play"><voice>nosuch</voice></action>\n'
            '<action name="b" method="goto"><nextaction>zz</nextaction></action>'
        )
    )
    code, out, err = run(
        capsys,
        "ivr",
        "check",
        str(FIXTURES / "mss-callto.xml"),
        str(bad),
        str(FIXTURES / "billion-laughs.xml"),
        str(tmp_path / "missing.xml"),
        "--voice",
        str(voice),
    )
    assert code == 1
    assert out.splitlines() == [f"OK: {FIXTURES / 'mss-callto.xml'} (2 actions)"]
    lines = err.splitlines()
    assert lines[:3] == [
        f"{bad}:2:32: prompt 'nosuch' does not exist in the voice folder",
        f"{bad}:3:32: nextaction 'zz' names no action",
        f"{FIXTURES / 'billion-laughs.xml'}:3:3: entity declaration 'lol' refused: "
        "IVR-XML allows no entity declarations",
    ]
    assert lines[3].startswith(f"{tmp_path / 'missing.xml'}:1:1: cannot read the file: ")
    assert len(lines) == 4


def test_check_finds_prompts_in_the_data_directory(
    capsys: pytest.CaptureFixture[str], voice: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "voice").mkdir(parents=True)
    (data / "voice" / "custom.wav").write_bytes(b"RIFF")
    mine = tmp_path / "mine.xml"
    mine.write_text(script('<action name="a" method="play"><voice>custom</voice></action>'))
    assert run(capsys, "ivr", "check", str(mine), "--data", str(data))[0] == 0
    code, _, err = run(capsys, "ivr", "check", str(mine), "--voice", str(voice))
    assert code == 1 and "prompt 'custom' does not exist" in err


SPEC_TRANSCRIPT = """\
simulating {file}: call from 100 to 800 on Mon 2026-01-05 10:00:00
[10:00:00] step 1: mainAction (getdtmf)
[10:00:00]   answer the call
[10:00:00]   play welcome (a key interrupts)
[10:00:03]     the caller presses 1
[10:00:03]   digits '1' match digits="1" -> sales
[10:00:03] step 2: sales (callto)
[10:00:03]   callto 100 (ring up to 30 s)
[10:00:03]   callto 100: busy
[10:00:03]   monitor-event busy -> callto101
[10:00:03] step 3: callto101 (callto)
[10:00:03]   callto 101 (ring up to 30 s)
[10:00:03]   callto 101: answered; bridged until either hangs up
[10:00:03] call ended: the bridged call to 101 ended
3 steps; ended: bridged
"""


def test_simulate_prints_each_step_and_how_the_call_ended(
    capsys: pytest.CaptureFixture[str], voice: Path
) -> None:
    spec = FIXTURES / "spec-example.xml"
    code, out, err = run(
        capsys,
        "ivr",
        "simulate",
        str(spec),
        "--digits",
        "1",
        "--outcome",
        "busy",
        "--outcome",
        "answered",
        "--time",
        "2026-01-05 10:00",
        "--voice",
        str(voice),
    )
    assert (code, err) == (0, "")
    assert out == SPEC_TRANSCRIPT.format(file=spec)


def test_simulate_with_no_answer_retries_and_a_silent_caller(
    capsys: pytest.CaptureFixture[str], voice: Path
) -> None:
    code, out, _ = run(
        capsys,
        "ivr",
        "simulate",
        str(ATTENDANT),
        "--digits=101#",
        "--outcome=no-answer",
        "--caller=555",
        "--called=801",
        "--time=2026-01-10T23:00",
        f"--voice={voice}",
    )
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == f"simulating {ATTENDANT}: call from 555 to 801 on Sat 2026-01-10 23:00:00"
    assert "[23:00:00]     the caller presses 101#" in lines
    assert "[23:00:30]   callto 101: no-answer" in lines
    assert "[23:00:30]   monitor-event no-answer -> noAnswer" in lines
    assert "[23:00:54]   monitor-event timeout -> goodbye" in lines
    assert lines[-2:] == ["[23:00:54] call ended: hangup at 'end'", "8 steps; ended: hangup"]


def test_simulate_stops_a_loop_at_the_step_budget_and_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    loop = tmp_path / "loop.xml"
    loop.write_text(
        script(
            '<action name="hold" method="wait"><seconds>5</seconds></action>\n'
            '<action name="again" method="goto"><nextaction>hold</nextaction></action>'
        )
    )
    config = tmp_path / "sipswitch.toml"
    config.write_text("[ivr]\nstep_budget = 4\n")
    code, out, _ = run(
        capsys, "ivr", "simulate", str(loop), "--config", str(config), "--time", "2026-01-05 10:00"
    )
    assert code == 1
    assert out.splitlines()[-2:] == [
        "[10:00:10] call ended: step budget of 4 steps used up at 'hold': hang up",
        "4 steps; ended: step-budget",
    ]
    code, out, _ = run(capsys, "ivr", "simulate", str(loop), "--steps", "2")
    assert code == 1 and out.splitlines()[-1] == "2 steps; ended: step-budget"


def test_simulate_refuses_a_broken_script_and_bad_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text('<mssxml version="1">\n<action name="a" method="dance"/></mssxml>')
    code, out, err = run(capsys, "ivr", "simulate", str(bad))
    assert code == 1 and out == ""
    assert err.startswith(f"{bad}:2:18: unknown method 'dance'")
    with pytest.raises(SystemExit):
        main(["ivr", "simulate", str(bad), "--outcome", "engaged"])
    with pytest.raises(SystemExit):
        main(["ivr", "simulate", str(bad), "--time", "tomorrow"])
    assert "expected a time like '2026-01-05 10:00'" in capsys.readouterr().err
    code, _, err = run(capsys, "ivr", "simulate", str(bad), "--steps", "0")
    assert code == 1 and "--steps must be at least 1" in err


def test_ivr_settings_defaults_and_errors(tmp_path: Path) -> None:
    settings = load_settings(None, tmp_path / "data")
    assert settings.ivr.numbers == {"800": "auto-attendant.xml"}
    assert settings.ivr.step_budget == 1000
    assert settings.ivr_xml_dir == (tmp_path / "data" / "xml").absolute()

    config = tmp_path / "site.toml"
    config.write_text(
        '[ivr]\nstep_budget = 50\nxml_dir = "scripts"\n\n[ivr.numbers]\n'
        '"800" = "auto-attendant.xml"\n"7000" = "hours.xml"\n'
    )
    settings = load_settings(config, tmp_path / "data")
    assert settings.ivr.numbers == {"800": "auto-attendant.xml", "7000": "hours.xml"}
    assert settings.ivr_xml_dir == (tmp_path / "data" / "scripts").absolute()

    for text, message in [
        ('[ivr.numbers]\n"800" = "../x.xml"\n', "is not a script file name"),
        ('[ivr.numbers]\n"8 0" = "a.xml"\n', "is not a number"),
        ("[ivr]\nstep_budget = 0\n", "greater than or equal to 1"),
        ("[ivr]\ncolour = 1\n", "unknown setting 'ivr.colour'"),
    ]:
        config.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_settings(config, tmp_path / "data")
        assert message in str(info.value), text
        assert info.value.line in (1, 2, 3)

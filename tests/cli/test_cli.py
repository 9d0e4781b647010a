"""The ``sipswitch`` command end to end: ``main([...])`` on a real data directory."""

from __future__ import annotations

import asyncio
import io
import re
import sqlite3
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from sipswitch.cli.main import main
from sipswitch.config import Settings
from sipswitch.store import Database, Extension, compute_ha1


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ./sipswitch.toml is picked up by default; keep the repository's out of the way.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def extensions(data: Path) -> dict[str, Extension]:
    async def load() -> dict[str, Extension]:
        async with Database(f"sqlite+aiosqlite:///{data / 'sipswitch.db'}") as db:
            return {ext.number: ext for ext in await db.extensions.list()}

    return asyncio.run(load())


def test_ext_add_list_set_remove(capsys: pytest.CaptureFixture[str], data: Path) -> None:
    code, out, _ = run(capsys, "ext", "add", "100", "--password", "pw-100", "--name", "Alice",
                       "--data", str(data))  # fmt: skip
    assert code == 0 and "Added extension 100" in out and "pw-100" not in out
    code, out, _ = run(capsys, "--data", str(data), "ext", "add", "101", "--password", "x",
                       "--max-calls", "2", "--max-outgoing", "0")  # fmt: skip
    assert code == 0

    ext = extensions(data)["100"]
    assert ext.ha1_md5 == compute_ha1("100", "sipswitch", "pw-100")
    assert (ext.display_name, ext.max_calls, extensions(data)["101"].max_outgoing_calls) == (
        "Alice", None, 0
    )  # fmt: skip

    code, out, _ = run(capsys, "ext", "list", "--data", str(data))
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == [
        "NUMBER", "NAME", "MAX", "CALLS", "MAX", "OUTGOING", "ENABLED", "MEDIA"
    ]  # fmt: skip
    assert lines[1].split() == ["100", "Alice", "unlimited", "unlimited", "yes", "auto"]
    assert lines[2].split() == ["101", "2", "0", "yes", "auto"]
    assert "pw-100" not in out and ext.ha1_md5 not in out

    code, out, _ = run(capsys, "ext", "set", "100", "--disable", "--max-calls", "1",
                       "--password", "new", "--data", str(data))  # fmt: skip
    assert code == 0 and "Updated extension 100" in out
    ext = extensions(data)["100"]
    assert (ext.enabled, ext.max_calls, ext.display_name) == (False, 1, "Alice")
    assert ext.ha1_sha256 == compute_ha1("100", "sipswitch", "new", "SHA-256")

    assert run(capsys, "ext", "set", "100", "--enable", "--max-calls", "unlimited",
               "--data", str(data))[0] == 0  # fmt: skip
    ext = extensions(data)["100"]
    assert (ext.enabled, ext.max_calls) == (True, None)

    code, out, _ = run(capsys, "ext", "remove", "100", "--data", str(data))
    assert code == 0 and "Removed extension 100" in out
    assert set(extensions(data)) == {"101"}


def test_generated_password_is_printed_once_and_works(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    code, out, _ = run(capsys, "ext", "add", "200", "--data", str(data))
    assert code == 0
    match = re.search(r"^Password: (\S+)$", out, re.MULTILINE)
    assert match is not None
    password = match.group(1)
    assert len(password) >= 12
    assert extensions(data)["200"].ha1_md5 == compute_ha1("200", "sipswitch", password)
    _, listing, _ = run(capsys, "ext", "list", "--data", str(data))
    assert password not in listing


def test_password_from_stdin(
    capsys: pytest.CaptureFixture[str], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n"))
    assert run(capsys, "ext", "add", "300", "--password", "-", "--data", str(data))[0] == 0
    assert extensions(data)["300"].ha1_md5 == compute_ha1("300", "sipswitch", "from stdin")


def test_realm_comes_from_the_settings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: Path
) -> None:
    config = tmp_path / "pbx.toml"
    config.write_text('[sip]\nrealm = "office"\n')
    assert run(capsys, "ext", "add", "100", "--password", "p", "--config", str(config),
               "--data", str(data))[0] == 0  # fmt: skip
    assert extensions(data)["100"].ha1_md5 == compute_ha1("100", "office", "p")
    # with the default realm the extension is flagged: its digests are for another realm
    _, out, _ = run(capsys, "ext", "list", "--data", str(data))
    assert out.splitlines()[1].startswith("100*") and "another realm" in out
    # a new password re-keys it to the configured realm
    assert run(capsys, "ext", "set", "100", "--password", "q", "--data", str(data))[0] == 0
    ext = extensions(data)["100"]
    assert (ext.realm, ext.ha1_md5) == ("sipswitch", compute_ha1("100", "sipswitch", "q"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ext", "add", "100", "--password", "x"], "already exists"),
        (["ext", "add", "bad number", "--password", "x"], "invalid extension number"),
        (["ext", "set", "404", "--disable"], "does not exist"),
        (["ext", "set", "100"], "nothing to change"),
        (["ext", "remove", "404"], "does not exist"),
        (["ext", "remove", "a/b"], "invalid extension number"),
        (["ext", "add", "101", "--password", ""], "password"),
    ],
)
def test_errors_exit_1_with_a_message(
    capsys: pytest.CaptureFixture[str], data: Path, argv: list[str], message: str
) -> None:
    assert run(capsys, "ext", "add", "100", "--password", "x", "--data", str(data))[0] == 0
    code, out, err = run(capsys, *argv, "--data", str(data))
    assert code == 1
    assert message in err and "Traceback" not in err


def test_bad_limit_is_a_usage_error(capsys: pytest.CaptureFixture[str], data: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ext", "add", "100", "--max-calls", "many", "--data", str(data)])
    assert info.value.code == 2
    assert "--max-calls" in capsys.readouterr().err


def test_empty_list(capsys: pytest.CaptureFixture[str], data: Path) -> None:
    assert run(capsys, "ext", "list", "--data", str(data))[1] == "No extensions.\n"


def test_check_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[sip]\nudp_port = 5070\n")
    assert run(capsys, "check-config", "--config", str(good)) == (0, f"OK: {good}\n", "")
    assert run(capsys, "--config", str(good), "check-config")[0] == 0

    bad = tmp_path / "bad.toml"
    bad.write_text("[sip]\n\nudp_port = 'x'\n")
    code, out, err = run(capsys, "check-config", "--config", str(bad))
    assert (code, out) == (1, "")
    assert err.startswith(f"{bad}:3: sip.udp_port")

    assert run(capsys, "check-config")[1].startswith("OK: no settings file")
    (tmp_path / "sipswitch.toml").write_text("[sip]\nnope = 1\n")
    code, _, err = run(capsys, "check-config")
    assert code == 1 and err.startswith("sipswitch.toml:2: unknown setting")


def test_ext_commands_refuse_a_broken_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[sip\n")
    code, _, err = run(capsys, "ext", "list", "--config", str(bad), "--data", str(data))
    assert code == 1 and err.startswith(f"{bad}:1: TOML syntax error")
    assert not data.exists()


def test_ext_add_while_another_process_holds_the_database(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    assert run(capsys, "ext", "add", "100", "--password", "x", "--data", str(data))[0] == 0
    # A reader in the middle of a transaction, as a running server may be (WAL lets the
    # command line commit meanwhile; a rollback journal would block it).
    reader = sqlite3.connect(data / "sipswitch.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM extensions").fetchone() == (1,)
        assert run(capsys, "ext", "add", "101", "--password", "y", "--data", str(data))[0] == 0
        assert reader.execute("SELECT count(*) FROM extensions").fetchone() == (1,)
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM extensions").fetchone() == (2,)
    finally:
        reader.close()


def test_serve_runs_the_server_with_the_settings(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Settings] = []
    sources: list[Callable[[], Settings]] = []

    async def serve(settings: Settings, settings_source: Callable[[], Settings]) -> int:
        seen.append(settings)
        sources.append(settings_source)
        await asyncio.sleep(0)
        return 7

    module = types.ModuleType("sipswitch.app")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sipswitch.app", module)
    config = tmp_path / "s.toml"
    config.write_text("[sip]\nudp_port = 0\n")
    assert run(capsys, "serve", "--config", str(config), "--data", str(data))[0] == 7
    assert seen[0].sip.udp_port == 0 and seen[0].data_dir == data
    config.write_text("[sip]\nudp_port = 5070\n")  # what SIGHUP reads: the same file and --data
    reloaded = sources[0]()
    assert reloaded.sip.udp_port == 5070 and reloaded.data_dir == data

    config.write_text("[sip]\nudp_port = 'x'\n")
    code, _, err = run(capsys, "serve", "--config", str(config))
    assert code == 1 and f"{config}:2:" in err
    assert len(seen) == 1


def test_ext_set_forward_media(capsys: pytest.CaptureFixture[str], data: Path) -> None:
    assert run(capsys, "ext", "add", "100", "--password", "pw", "--data", str(data))[0] == 0
    assert extensions(data)["100"].forward_media is False
    code, out, _ = run(capsys, "ext", "set", "100", "--forward-media", "--data", str(data))
    assert code == 0 and extensions(data)["100"].forward_media is True
    _, out, _ = run(capsys, "ext", "list", "--data", str(data))
    assert out.splitlines()[1].split()[-1] == "relayed"
    assert run(capsys, "ext", "set", "100", "--no-forward-media", "--data", str(data))[0] == 0
    assert extensions(data)["100"].forward_media is False

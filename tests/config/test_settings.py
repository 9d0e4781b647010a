"""Settings: defaults, a full file, and FILE:LINE errors for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipswitch.config import ConfigError, Settings, load_settings

FULL = """\
# sipswitch settings
data_dir = "var"

[sip]
listen = ["127.0.0.1", "::1"]
udp_port = 5070
tcp_port = 0
domain = "PBX.Example.com"
realm = "example"
user_agent = "pbx 1"

[registrar]
min_expires = 30
max_expires = 600
default_expires = 300
max_contacts = 5

[calls]
ring_timeout = 12.5

[database]
url = "postgresql://user:pw@db.example.com/pbx"

[log]
level = "DEBUG"
"""


def write(tmp_path: Path, text: str, name: str = "sipswitch.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(path, None)
    return info.value


def test_no_file_gives_every_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, None)
    assert s.sip.listen == ["0.0.0.0", "::"]
    assert (s.sip.udp_port, s.sip.tcp_port) == (5060, 5060)
    assert (s.sip.domain, s.sip.realm, s.sip.user_agent) == ("", "sipswitch", "sipswitch")
    r = s.registrar
    assert (r.min_expires, r.max_expires, r.default_expires, r.max_contacts) == (60, 3600, 3600, 3)
    assert s.calls.ring_timeout == 30
    assert s.log.level == "info"
    assert s.data_dir == tmp_path / "data"
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'sipswitch.db'}"


def test_empty_file_equals_defaults(tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert load_settings(write(tmp_path, ""), data) == load_settings(None, data)


def test_full_file_is_read_and_normalised(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL), None)
    assert s.sip.listen == ["127.0.0.1", "::1"]
    assert (s.sip.udp_port, s.sip.tcp_port) == (5070, 0)
    assert s.sip.domain == "pbx.example.com"
    assert s.registrar.default_expires == 300
    assert s.calls.ring_timeout == 12.5
    assert s.log.level == "debug"
    assert s.database_url == "postgresql+asyncpg://user:pw@db.example.com/pbx"
    # a relative data_dir in the file is relative to the file, not to the working directory
    assert s.data_dir == tmp_path / "var"


def test_data_option_wins_over_the_file(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL), tmp_path / "other")
    assert s.data_dir == tmp_path / "other"


def test_settings_are_immutable() -> None:
    s = load_settings(None, None)
    with pytest.raises(ValueError):
        s.sip.udp_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////var/lib/x.db", "sqlite+aiosqlite:////var/lib/x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgres://h/db", "postgresql+asyncpg://h/db"),
        ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db"),
    ],
)
def test_database_url_forms(tmp_path: Path, url: str, expected: str) -> None:
    s = load_settings(write(tmp_path, f'[database]\nurl = "{url}"\n'), None)
    assert s.database_url == expected


SYNTAX_ERRORS = [
    ("[sip]\nudp_port = = 5060\n", 2),
    ("[sip]\nrealm = 'a'\n\n[sip]\n", 4),
    ("[sip]\nrealm = 'a'\nrealm = 'b'\n", 3),
    ('[sip]\n\nrealm = "unterminated\n', 3),
    ("[log\nlevel = 'info'\n", 1),
]


@pytest.mark.parametrize(("text", "line"), SYNTAX_ERRORS)
def test_syntax_errors_name_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    err = error_of(path)
    assert err.line == line
    assert str(err).startswith(f"{path}:{line}: TOML syntax error")


CASES = [
    # (file text, expected line, text in message)
    ("[sip]\nudp_port = 5060\nbogus = 1\n", 3, "unknown setting 'sip.bogus'"),
    ("\n\n[voicemail]\nenabled = true\n", 3, "unknown section [voicemail]"),
    ("surprise = 1\n", 1, "unknown setting 'surprise'"),
    ("[sip]\n# port\nudp_port = \"5060\"\n", 3, "sip.udp_port: Input should be a valid integer"),
    ("[sip]\ntcp_port = 70000\n", 2, "sip.tcp_port"),
    ("[sip]\nudp_port = -1\n", 2, "sip.udp_port"),
    ("[sip]\nudp_port = true\n", 2, "sip.udp_port"),
    ("[sip]\nlisten = [\n  \"127.0.0.1\",\n  \"example.com\",\n]\n", 2, "'example.com' is not"),
    ("[sip]\nlisten = []\n", 2, "at least one address"),
    ("[sip]\nlisten = [\"::1\", \"0:0::1\"]\n", 2, "listed twice"),
    ("[sip]\ndomain = \"bad_host!\"\n", 2, "sip.domain"),
    ("[sip]\nrealm = \"\"\n", 2, "sip.realm"),
    ("[sip]\nrealm = 'a\"b'\n", 2, "sip.realm"),
    ("[registrar]\nmin_expires = 0\n", 2, "registrar.min_expires"),
    ("[registrar]\nmin_expires = 100\nmax_expires = 50\n", 3, "below min_expires"),
    ("[registrar]\nmax_expires = 600\n", 1, "above max_expires"),
    ("[registrar]\nmax_expires = 600\ndefault_expires = 900\n", 3, "above max_expires"),
    ("[registrar]\nmax_contacts = 0\n", 2, "registrar.max_contacts"),
    ("[calls]\nring_timeout = 0\n", 2, "calls.ring_timeout"),
    ("[calls]\nring_timeout = \"30\"\n", 2, "calls.ring_timeout"),
    ("[database]\nurl = \"mysql://h/db\"\n", 2, "unsupported database 'mysql'"),
    ("[log]\nlevel = \"loud\"\n", 2, "log.level"),
    ("sip = 5\n", 1, "sip"),
    ("data_dir = 5\n", 1, "data_dir"),
    ("sip.udp_port = \"x\"\n", 1, "sip.udp_port"),
    ("[sip]\n\"udp_port\" = \"x\"\n", 2, "sip.udp_port"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), CASES)
def test_value_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, text)
    err = error_of(path)
    assert str(err).startswith(f"{path}:{line}: "), str(err)
    assert fragment in str(err)


def test_registrar_default_outside_range_points_at_section(tmp_path: Path) -> None:
    # default_expires is not written, so the table header is the nearest line.
    err = error_of(write(tmp_path, "# x\n\n[registrar]\nmax_expires = 600\n"))
    assert err.line == 3


def test_every_error_is_reported_in_line_order(tmp_path: Path) -> None:
    path = write(tmp_path, "[log]\nlevel = 'x'\n[sip]\nudp_port = 'x'\nnope = 1\n")
    lines = str(error_of(path)).splitlines()
    assert [line.split(":")[1] for line in lines] == ["2", "4", "5"]
    assert all(line.startswith(f"{path}:") for line in lines)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert str(error_of(path)) == f"{path}:1: cannot read the file: No such file or directory"


def test_non_utf8_file_points_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[sip]\nrealm = \"caf\xe9\"\n")
    err = error_of(path)
    assert err.line == 2 and "UTF-8" in err.message


def test_keys_inside_multiline_strings_are_not_mistaken_for_settings(tmp_path: Path) -> None:
    text = '[sip]\nuser_agent = """\nudp_port = 1\n"""\nudp_port = "x"\n'
    # the multi-line string is itself invalid (control characters), so expect two errors
    err = error_of(write(tmp_path, text))
    found = {issue.message.split(":")[0]: issue.line for issue in err.issues}
    assert found == {"sip.user_agent": 2, "sip.udp_port": 5}


@settings(max_examples=60, deadline=None)
@given(
    before=st.lists(
        st.sampled_from(["", "# comment", "realm = 'x'", "listen = [\n'::1',\n]", "domain = ''"]),
        max_size=6,
        unique=True,
    ),
    after=st.lists(st.sampled_from(["", "# c", "user_agent = 'u'"]), max_size=3, unique=True),
    bad=st.sampled_from(["udp_port = 'x'", "tcp_port = 99999", "nope = 1", "max = true"]),
)
def test_error_line_follows_the_offending_key(
    tmp_path_factory: pytest.TempPathFactory, before: list[str], after: list[str], bad: str
) -> None:
    head = "\n".join(["[sip]", *before])
    bad_line = head.count("\n") + 2
    text = "\n".join([head, bad, *after]) + "\n"
    path = write(tmp_path_factory.mktemp("cfg"), text)
    err = error_of(path)
    assert err.line == bad_line, (text, str(err))


def test_settings_model_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError):
        Settings.model_validate({"sip": {"udp_port": 1, "port": 2}})


def test_auth_algorithms_keep_their_order_and_reject_unknown(tmp_path: Path) -> None:
    config = tmp_path / "sipswitch.toml"
    config.write_text('[sip]\nauth_algorithms = ["sha-256", "md5"]\n')
    assert load_settings(config).sip.auth_algorithms == ["SHA-256", "MD5"]
    assert load_settings(None, tmp_path).sip.auth_algorithms == ["MD5", "SHA-256"]
    config.write_text('[sip]\nauth_algorithms = ["SHA-1"]\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert f"{config}:2:" in str(info.value)

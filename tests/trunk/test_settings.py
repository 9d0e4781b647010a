"""The ``[[trunks]]`` settings: defaults, consistency checks, errors with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipswitch.config import ConfigError, load_settings
from sipswitch.config.trunks import TrunkSettings


def _load(tmp_path: Path, text: str) -> list[TrunkSettings]:
    path = tmp_path / "sipswitch.toml"
    path.write_text(text)
    return load_settings(path, tmp_path / "data").trunks


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    return str(caught.value)


def test_defaults(tmp_path: Path) -> None:
    (trunk,) = _load(tmp_path, '[[trunks]]\nname = "hq"\nhost = "HQ.Example.com."\n')
    assert trunk.kind == "trunk" and trunk.host == "hq.example.com"
    assert trunk.port == 5060 and trunk.transport == "udp"
    assert trunk.max_incoming is None and trunk.max_outgoing is None  # unlimited
    assert trunk.options_interval == 30 and trunk.options_failures == 3
    assert trunk.caller_id == "keep" and not trunk.asserted_identity
    assert trunk.transit is False and not trunk.may_reach("other")
    assert trunk.sip_domain == "hq.example.com"


def test_transit_to_all_or_to_named_trunks() -> None:
    base = {"name": "carrier", "host": "192.0.2.1"}
    assert TrunkSettings.model_validate({**base, "transit": True}).may_reach("x")
    listed = TrunkSettings.model_validate({**base, "transit": ["branch-a"]})
    assert listed.may_reach("branch-a") and not listed.may_reach("carrier")


def test_a_line_needs_credentials(tmp_path: Path) -> None:
    message = _error(tmp_path, '\n[[trunks]]\nname = "c"\nkind = "line"\nhost = "192.0.2.1"\n')
    assert "sipswitch.toml:2:" in message and "username and password are needed" in message


def test_fixed_caller_id_needs_a_number(tmp_path: Path) -> None:
    message = _error(tmp_path, '[[trunks]]\nname = "c"\nhost = "192.0.2.1"\ncaller_id = "fixed"\n')
    assert "needs caller_number" in message


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ('uri_params = "user=phone\\r\\nX: y"', "name=value pairs"),
        ('dids = { "5551000" = "bad number" }', "both must be numbers"),
        ("max_incoming = -1", "greater than or equal to 0"),
        ('transport = "sctp"', "transport"),
        ('sources = ["not-a-network"]', "CIDR"),
        ('transit = ["bad name!"]', "not a trunk name"),
        ('password = "a\\u0000b"', "control characters"),
    ],
)
def test_bad_values_name_their_line(tmp_path: Path, line: str, complaint: str) -> None:
    message = _error(tmp_path, f'[[trunks]]\nname = "c"\nhost = "192.0.2.1"\n{line}\n')
    assert "sipswitch.toml:4:" in message and complaint in message, message


def test_names_are_unique(tmp_path: Path) -> None:
    text = '[[trunks]]\nname = "a"\nhost = "192.0.2.1"\n[[trunks]]\nname = "a"\nhost = "h"\n'
    assert "trunk name 'a' is used twice" in _error(tmp_path, text)


def test_the_documented_configurations_load(tmp_path: Path) -> None:
    """The three files of docs/multi-branch.md and the README's trunk example are valid."""
    import re

    root = Path(__file__).resolve().parents[2]
    docs = (root / "docs" / "multi-branch.md").read_text()
    readme = (root / "README.md").read_text()
    readme = readme[readme.index("## External lines and trunks") :]
    blocks = re.findall(r"```toml\n(.*?)```", docs, re.S)[:3]
    blocks.append(re.findall(r"```toml\n(.*?)```", readme, re.S)[0])
    names = []
    for text in blocks:
        names.append([t.name for t in _load(tmp_path, text)])
    assert names[:3] == [["branch-a", "branch-b", "carrier"], ["hq"], ["hq"]]


def test_tls_verify_clients(tmp_path: Path) -> None:
    path = tmp_path / "sipswitch.toml"
    path.write_text("[tls]\n")
    tls = load_settings(path, tmp_path / "data").tls
    assert tls is not None and tls.verify_clients == "none"  # phones as before
    path.write_text('[tls]\nverify_clients = "optional"\n')
    tls = load_settings(path, tmp_path / "data").tls
    assert tls is not None and tls.verify_clients == "optional"
    message = _error(tmp_path, '[tls]\nport = 5061\nverify_clients = "required"\n')
    assert "sipswitch.toml:3" in message and "verify_clients" in message, message

"""The ``sipswitch.toml`` settings schema, its defaults, and loading with file:line errors."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

from sipswitch.config.errors import ConfigError, ConfigIssue
from sipswitch.config.routing import DialRule, GroupSettings, ListSettings, check_unique_numbers
from sipswitch.config.toml_lines import key_lines, locate
from sipswitch.config.trunks import TrunkSettings, check_unique_names

DEFAULT_DATA_DIR = Path("data")
DATABASE_FILE = "sipswitch.db"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# 0 means "let the system pick a free port".
Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[int, Field(gt=0, le=2**31 - 1)]

_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Section(BaseModel):
    """Base of every settings table: unknown keys and silent type coercion are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SipSettings(Section):
    listen: list[str] = Field(default_factory=lambda: ["0.0.0.0", "::"])
    udp_port: Port = 5060
    tcp_port: Port = 5060
    domain: str = ""
    realm: str = "sipswitch"
    user_agent: str = "sipswitch"
    # Answer UDP requests at the port they came from even without ;rport (phones behind NAT).
    force_rport: bool = True
    # Digest challenges, in the order sent. MD5 comes first by default because many phones
    # (and SIPp) answer only the first challenge and know nothing else.
    auth_algorithms: list[str] = Field(default_factory=lambda: ["MD5", "SHA-256"])
    # Processes sharing the calls (docs/scaling.md): 1 is one process doing everything; with
    # more, the first reads every socket and hands each dialog to its owner by Call-ID.
    workers: Annotated[int, Field(ge=1, le=16)] = 1  # 16: steering.MAX_WORKERS

    @field_validator("auth_algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        known = {"MD5": "MD5", "SHA-256": "SHA-256"}
        out: list[str] = []
        for item in value:
            name = known.get(item.strip().upper())
            if name is None:
                raise ValueError(f"{item!r} is not a digest algorithm (MD5 or SHA-256)")
            if name in out:
                raise ValueError(f"{item!r} is listed twice")
            out.append(name)
        if not out:
            raise ValueError("at least one algorithm is needed")
        return out

    @field_validator("listen")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one address is needed")
        if len(value) > 32:
            raise ValueError("at most 32 addresses")
        normalised: list[str] = []
        for item in value:
            try:
                address = ipaddress.ip_address(item.strip().strip("[]"))
            except ValueError:
                raise ValueError(f"{item!r} is not an IPv4 or IPv6 address") from None
            if str(address) in normalised:
                raise ValueError(f"{item!r} is listed twice")
            normalised.append(str(address))
        return normalised

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip().lower()
        if not value:
            return ""
        try:
            return str(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            pass
        if len(value) > 253 or not _HOSTNAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name or IP address")
        return value.rstrip(".")

    @field_validator("realm")
    @classmethod
    def _realm(cls, value: str) -> str:
        if not value or len(value) > 128:
            raise ValueError("the realm must be 1 to 128 characters")
        if _CONTROL.search(value) or '"' in value or "\\" in value:
            raise ValueError("the realm must not contain quotes, backslashes or control characters")
        return value

    @field_validator("user_agent")
    @classmethod
    def _user_agent(cls, value: str) -> str:
        if len(value) > 128 or _CONTROL.search(value):
            raise ValueError("at most 128 characters, no control characters")
        return value


class RegistrarSettings(Section):
    min_expires: Seconds = 60
    max_expires: Seconds = 3600
    default_expires: Annotated[Seconds, Field(validate_default=True)] = 3600
    max_contacts: Annotated[int, Field(ge=1, le=100)] = 3

    @field_validator("max_expires")
    @classmethod
    def _max_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_expires")
        if low is not None and value < low:
            raise ValueError(f"max_expires ({value}) is below min_expires ({low})")
        return value

    @field_validator("default_expires")
    @classmethod
    def _default_in_range(cls, value: int, info: ValidationInfo) -> int:
        low, high = info.data.get("min_expires"), info.data.get("max_expires")
        if low is not None and value < low:
            raise ValueError(f"default_expires ({value}) is below min_expires ({low})")
        if high is not None and value > high:
            raise ValueError(f"default_expires ({value}) is above max_expires ({high})")
        return value


class CallSettings(Section):
    ring_timeout: Annotated[float, Field(gt=0, le=3600)] = 30


_SCRIPT_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.xml")
_DIALLED = re.compile(r"[A-Za-z0-9+*#._-]{1,32}")


class IvrSettings(Section):
    """IVR-XML scripts: which dialled numbers run which script, and where scripts live."""

    # Dialled number -> script file name (in xml_dir, or one shipped with sipswitch).
    numbers: dict[str, str] = Field(default_factory=lambda: {"800": "auto-attendant.xml"})
    # Actions one call may run before it is hung up: stops a flow that loops forever.
    step_budget: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    # Folder of the scripts; empty: the data directory's xml/; relative: inside the data dir.
    xml_dir: str = ""

    @field_validator("numbers")
    @classmethod
    def _numbers(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 10_000:
            raise ValueError("at most 10000 numbers")
        for number, script in value.items():
            if not _DIALLED.fullmatch(number):
                raise ValueError(f"{number!r} is not a number (1 to 32 of 0-9 A-Z + * # . _ -)")
            if not _SCRIPT_FILE.fullmatch(script):
                raise ValueError(
                    f"{number}: {script!r} is not a script file name (NAME.xml, no folders)"
                )
        return value

    @field_validator("xml_dir")
    @classmethod
    def _xml_dir(cls, value: str) -> str:
        value = value.strip()
        if _CONTROL.search(value) or len(value) > 4096:
            raise ValueError("not a usable folder path")
        return value


class MediaSettings(Section):
    """RTP for calls the server answers itself (IVR prompts, voicemail)."""

    rtp_port_min: Annotated[int, Field(ge=1024, le=65534)] = 10000
    rtp_port_max: Annotated[int, Field(ge=1025, le=65535)] = 20000

    @field_validator("rtp_port_max")
    @classmethod
    def _range(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("rtp_port_min")
        if low is not None and value - low < 2:
            raise ValueError("the RTP port range needs at least one even/odd pair")
        return value


class DatabaseSettings(Section):
    url: str = ""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        scheme, sep, rest = value.partition("://")
        if not sep:
            raise ValueError("expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://...")
        aliases = {
            "sqlite": "sqlite+aiosqlite",
            "sqlite+aiosqlite": "sqlite+aiosqlite",
            "postgres": "postgresql+asyncpg",
            "postgresql": "postgresql+asyncpg",
            "postgresql+asyncpg": "postgresql+asyncpg",
        }
        driver = aliases.get(scheme.lower())
        if driver is None:
            raise ValueError(f"unsupported database {scheme!r}: use sqlite or postgresql")
        return f"{driver}://{rest}"


class LogSettings(Section):
    level: str = "info"

    @field_validator("level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
        return value.lower()


class TlsSettings(Section):
    """SIP over TLS; present only when the file has a ``[tls]`` table."""

    port: Port = 5061
    # Relative paths are inside the data directory (``sipswitch tls selfsigned`` writes there).
    cert: str = "tls/cert.pem"
    key: str = "tls/key.pem"
    chain: str = ""  # intermediate certificates, when not already after the cert in ``cert``
    # CA certificates trusted when sipswitch connects to other servers over TLS; empty: the
    # system's store.
    ca_file: str = ""
    # Ask TLS clients for a certificate: "none" (phones connect as before), or "optional": a
    # client may present one, which must then verify against ``ca_file`` (or the system's
    # store); trunks with transport "tls" are recognised by what it names.
    verify_clients: Literal["none", "optional"] = "none"
    handshake_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    max_connections_per_source: Annotated[int, Field(ge=1, le=100_000)] = 32

    @field_validator("cert", "key", "chain", "ca_file")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value and info.field_name in ("cert", "key"):
            raise ValueError("a file path is needed")
        if _CONTROL.search(value) or len(value) > 4096:
            raise ValueError("not a usable file path")
        return value

    def path(self, value: str, data_dir: Path) -> Path | None:
        """``value`` (one of the path settings) resolved against the data directory."""
        if not value:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else data_dir / path


def _cidrs(value: list[str]) -> list[str]:
    """CIDR networks (or single addresses), normalised; ValueError naming the bad entry."""
    if len(value) > 1024:
        raise ValueError("at most 1024 entries")
    out: list[str] = []
    for item in value:
        try:
            network = ipaddress.ip_network(item.strip().strip("[]"), strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        out.append(str(network))
    return out


def _ip_literal(value: str) -> str:
    value = value.strip().strip("[]")
    if not value:
        return ""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value[:60]!r} is not an IP address") from None


class NatSettings(Section):
    """The server's addresses toward its own networks and toward the outside, and NAT handling
    of phones. Toward a peer inside ``local_networks`` the server advertises ``local_address``
    (empty: the address the system routes from); toward any other peer ``external_address``
    (empty: the same as toward the LAN, i.e. no NAT in front of the server).

    A phone whose Contact names another address than the one its REGISTER came from is behind
    NAT (``pbx.keepalive``): every ``keepalive_interval`` seconds (0: never) the server sends it
    an OPTIONS over UDP, or a CRLF ping (RFC 5626) on its TCP/TLS connection, to keep the NAT
    mapping open. An OPTIONS not answered within ``keepalive_timeout`` seconds (at most the
    interval), or a connection found closed, is a failure; after ``keepalive_failures`` in a
    row the phone is unreachable (calls to it fail at once) until it answers or registers
    again."""

    local_address: str = ""
    external_address: str = ""
    keepalive_interval: Annotated[float, Field(ge=0, le=3600)] = 30.0
    keepalive_timeout: Annotated[float, Field(gt=0, le=60)] = 4.0
    keepalive_failures: Annotated[int, Field(ge=1, le=100)] = 2
    local_networks: list[str] = Field(
        default_factory=lambda: [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "::1/128",
            "fc00::/7",
            "fe80::/10",
        ]
    )

    @field_validator("local_address", "external_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _ip_literal(value)

    @field_validator("local_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _cidrs(value)


class RelaySettings(Section):
    """The media relay ("forward media stream"): which engine, and when calls use it.
    ``engine`` is "inprocess" (the default, RTP relayed by the server process, ports from
    ``[media]``) or "rtpengine" (an rtpengine daemon driven over its ng protocol at
    ``rtpengine``). ``always`` relays every call; otherwise calls are relayed when an
    extension or trunk asks for it, a side is behind NAT, or the sides are in different
    address realms. ``timeout`` ends an answered call whose media stopped for that long."""

    engine: str = "inprocess"
    rtpengine: str = "127.0.0.1:2223"
    # rtpengine with several interfaces (--interface=lan/10.0.0.1 --interface=wan/203.0.113.5):
    # the interface name for each address the server advertises, e.g. {"10.0.0.1" = "lan"}.
    rtpengine_interfaces: dict[str, str] = Field(default_factory=dict)
    always: bool = False
    timeout: Annotated[float, Field(gt=0, le=86400)] = 60.0

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value not in ("inprocess", "rtpengine"):
            raise ValueError('engine must be "inprocess" or "rtpengine"')
        return value

    @field_validator("rtpengine_interfaces")
    @classmethod
    def _interfaces(cls, value: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for address, name in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
                raise ValueError(f"{name!r} is not an rtpengine interface name")
            out[_ip_literal(address)] = name
        return out

    @field_validator("rtpengine")
    @classmethod
    def _ng_address(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("rtpengine must be HOST:PORT (the ng control address)")
        if not _ip_literal(host):
            raise ValueError("rtpengine needs an IP address before the port")
        return value


class SecuritySettings(Section):
    """Brute-force bans, per-source rate limits, overload answers and scanner filtering."""

    ban_failures: Annotated[int, Field(ge=1, le=10_000)] = 5
    ban_window: Seconds = 60
    ban_time: Seconds = 300
    # Sources never banned or rate limited (trunks, office NAT addresses): CIDRs or addresses.
    # Loopback is in by default: local tools and test drivers, never reachable from outside.
    allow: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1"])
    # Requests per second one source address may send (sustained) and in a burst; 0: no limit.
    rate_limit: Annotated[int, Field(ge=0, le=1_000_000)] = 50
    rate_burst: Annotated[int, Field(ge=1, le=1_000_000)] = 200
    # New requests in progress at once above which new ones get 503 with Retry-After.
    overload_pending: Annotated[int, Field(ge=1, le=10_000_000)] = 5000
    overload_retry_after: Annotated[int, Field(ge=1, le=3600)] = 5
    drop_scanners: bool = True
    # Case-insensitive parts of User-Agent values that scanning tools send.
    scanner_user_agents: list[str] = Field(
        default_factory=lambda: [
            "friendly-scanner",
            "sipvicious",
            "sipcli",
            "sip-scan",
            "sundayddr",
            "iwar",
            "sivus",
            "smap",
            "vaxsipuseragent",
            "vaxipuseragent",
            "friendly-request",
            "pplsip",
        ]
    )

    @field_validator("allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _cidrs(value)

    @field_validator("scanner_user_agents")
    @classmethod
    def _agents(cls, value: list[str]) -> list[str]:
        if len(value) > 256:
            raise ValueError("at most 256 entries")
        out: list[str] = []
        for item in value:
            item = item.strip().lower()
            if not item or len(item) > 128 or _CONTROL.search(item):
                raise ValueError(f"{item!r}: 1 to 128 characters, no control characters")
            out.append(item)
        return out


class Settings(Section):
    """All server settings. ``data_dir`` comes from ``--data``, the file, or ``./data``."""

    data_dir: Path = DEFAULT_DATA_DIR
    sip: SipSettings = Field(default_factory=SipSettings)
    registrar: RegistrarSettings = Field(default_factory=RegistrarSettings)
    calls: CallSettings = Field(default_factory=CallSettings)
    ivr: IvrSettings = Field(default_factory=IvrSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    tls: TlsSettings | None = None  # no [tls] table: TLS is off
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    nat: NatSettings = Field(default_factory=NatSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    groups: list[GroupSettings] = Field(default_factory=list)
    dialplan: list[DialRule] = Field(default_factory=list)
    lists: ListSettings = Field(default_factory=ListSettings)
    trunks: list[TrunkSettings] = Field(default_factory=list)

    @field_validator("trunks")
    @classmethod
    def _unique_trunks(cls, value: list[TrunkSettings]) -> list[TrunkSettings]:
        return check_unique_names(value)

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, value: list[GroupSettings]) -> list[GroupSettings]:
        return check_unique_numbers(value)

    @property
    def database_url(self) -> str:
        """The configured URL, or the SQLite file inside the data directory."""
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.data_dir.absolute() / DATABASE_FILE}"

    @property
    def ivr_xml_dir(self) -> Path:
        """Where IVR-XML scripts are read: ``ivr.xml_dir`` (inside the data directory when
        relative), else the data directory's ``xml/``."""
        if not self.ivr.xml_dir:
            return self.data_dir / "xml"
        path = Path(self.ivr.xml_dir).expanduser()
        return path if path.is_absolute() else self.data_dir / path


def load_settings(config_path: Path | None, data_dir: Path | None = None) -> Settings:
    """Read and validate settings; ``None`` means no file (all defaults).

    ``data_dir`` (the ``--data`` option) wins over a ``data_dir`` key in the file.
    Raises ConfigError with ``FILE:LINE: message`` for every kind of problem.
    """
    raw: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    name = str(config_path) if config_path is not None else "<defaults>"
    if config_path is not None:
        text = _read_text(config_path)
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _syntax_error(name, text, exc) from None
        lines = key_lines(text)

    file_data_dir = raw.pop("data_dir", None)
    if data_dir is None and file_data_dir is not None:
        if not isinstance(file_data_dir, str) or not file_data_dir.strip():
            line = locate(lines, ("data_dir",))
            raise ConfigError.at(name, line, "data_dir: expected a non-empty path string")
        data_dir = Path(file_data_dir)
        if not data_dir.is_absolute() and config_path is not None:
            data_dir = config_path.parent / data_dir
    raw["data_dir"] = (data_dir or DEFAULT_DATA_DIR).absolute()

    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        issues = [
            ConfigIssue(name, locate(lines, tuple(err["loc"])), _describe(err))
            for err in exc.errors()
        ]
        raise ConfigError(issues) from None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError.at(str(path), 1, f"cannot read the file: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError.at(str(path), line, "the file is not valid UTF-8") from None


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")


def _syntax_error(name: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(exc)
    match = _TOML_POSITION.search(message)
    if match is not None:
        line = int(match.group(1))
        detail = f"{message[: match.start()]} (column {match.group(2)})"
    else:
        line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        detail = _TOML_END.sub(" (at end of file)", message)
    return ConfigError.at(name, line, f"TOML syntax error: {detail}")


def _describe(err: ErrorDetails) -> str:
    path = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        if len(err["loc"]) == 1 and isinstance(err["input"], dict):
            return f"unknown section [{path}]"
        return f"unknown setting '{path}'"
    message = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, str | int | float | bool) and err["type"] != "value_error":
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        message = f"{message} (got {shown})"
    return f"{path}: {message}" if path else message

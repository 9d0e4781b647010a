"""Settings for external lines and SIP trunks: the ``[[trunks]]`` array.

```toml
[[trunks]]
name = "carrier"             # used by the dial plan: target = "trunk:carrier"
kind = "line"                # line: registers to a carrier; trunk: IP-trusted peer
host = "sip.carrier.example" # name or address; inbound calls are recognised by it
port = 5060
transport = "udp"            # udp, tcp or tls (tls needs the [tls] section; the peer's
                             # certificate must name host, and the trunk is recognised by it:
                             # see docs/multi-branch.md, "Trunks over TLS")
username = "5551000"         # lines: the account (also answers the carrier's 401/407)
password = "..."
auth_user = ""               # when the authentication user differs from the username
realm = ""                   # answer only challenges of this realm (empty: any)
domain = ""                  # registrar domain and From host (empty: host)
expires = 3600               # registration period asked for
dids = { "5551000" = "800", "5551001" = "200" }  # called number -> number routed
default_destination = "800"  # inbound calls to any other number (empty: routed as dialled)
max_incoming = 10            # concurrent calls; absent: unlimited, 0: none at all
max_outgoing = 10
caller_id = "keep"           # keep the caller's number, or "fixed": caller_number
caller_number = ""
asserted_identity = false    # also send P-Asserted-Identity with that number
uri_params = ""              # extra Request-URI parameters, e.g. "user=phone"
options_interval = 30        # seconds between OPTIONS health checks (0: none)
options_failures = 3         # unanswered checks in a row before the trunk is down
transit = false              # calls from this trunk may leave through a trunk: true (any),
                             # or the names of the trunks they may use
sources = []                 # further addresses (CIDR) calls from this trunk come from; for a
                             # tls trunk: the only addresses its certificate counts from
```
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_NUMBER = re.compile(r"[0-9*#+]{1,32}|[A-Za-z0-9._-]{1,32}")
_CREDENTIAL = re.compile(r"[^\x00-\x1f\x7f]{0,128}")
# URI parameters: name[=value] pairs separated by ';', in the characters RFC 3261 allows.
_URI_PARAMS = re.compile(
    r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+)?"
    r"(?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+)?)*"
)

CallLimit = Annotated[int, Field(ge=0, le=1_000_000)]


class TrunkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    kind: Literal["line", "trunk"] = "trunk"
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 5060
    transport: Literal["udp", "tcp", "tls"] = "udp"
    username: str = ""
    password: str = ""
    auth_user: str = ""
    realm: str = ""
    domain: str = ""
    expires: Annotated[int, Field(ge=30, le=86_400)] = 3600
    dids: dict[str, str] = Field(default_factory=dict)
    default_destination: str = ""
    max_incoming: CallLimit | None = None
    max_outgoing: CallLimit | None = None
    caller_id: Literal["keep", "fixed"] = "keep"
    caller_number: str = ""
    asserted_identity: bool = False
    uri_params: str = ""
    options_interval: Annotated[float, Field(ge=0, le=3600)] = 30.0
    options_failures: Annotated[int, Field(ge=1, le=100)] = 3
    transit: bool | list[str] = False
    sources: list[str] = Field(default_factory=list)
    forward_media: bool = False  # relay the RTP of this trunk's calls through the server

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r}: 1 to 64 of A-Z a-z 0-9 _ . -")
        return value

    @field_validator("host", "domain")
    @classmethod
    def _host(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip().lower()
        if not value:
            if info.field_name == "host":
                raise ValueError("a host name or address is needed")
            return ""
        try:
            return str(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            pass
        if len(value) > 253 or not _HOSTNAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name or IP address")
        return value.rstrip(".")

    @field_validator("username", "password", "auth_user", "realm")
    @classmethod
    def _credential(cls, value: str) -> str:
        if not _CREDENTIAL.fullmatch(value):
            raise ValueError("at most 128 characters, no control characters")
        return value

    @field_validator("caller_number", "default_destination")
    @classmethod
    def _number(cls, value: str) -> str:
        if value and not _NUMBER.fullmatch(value):
            raise ValueError(f"{value!r} is not a number (1 to 32 of 0-9 * # + or A-Z . _ -)")
        return value

    @field_validator("dids")
    @classmethod
    def _dids(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 100_000:
            raise ValueError("at most 100000 numbers")
        for number, target in value.items():
            if not _NUMBER.fullmatch(number) or not _NUMBER.fullmatch(target):
                raise ValueError(f"{number!r} = {target!r}: both must be numbers")
        return value

    @field_validator("uri_params")
    @classmethod
    def _uri_params(cls, value: str) -> str:
        value = value.strip().lstrip(";")
        if value and (len(value) > 256 or not _URI_PARAMS.fullmatch(value)):
            raise ValueError(f"{value!r}: expected name=value pairs separated by ';'")
        return value

    @field_validator("transit")
    @classmethod
    def _transit(cls, value: bool | list[str]) -> bool | list[str]:
        if isinstance(value, list):
            if len(value) > 1000:
                raise ValueError("at most 1000 trunk names")
            for name in value:
                if not _NAME.fullmatch(name):
                    raise ValueError(f"{name!r} is not a trunk name")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        if len(value) > 256:
            raise ValueError("at most 256 entries")
        out: list[str] = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(item.strip().strip("[]"), strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return out

    @model_validator(mode="after")
    def _consistent(self) -> TrunkSettings:
        if self.kind == "line" and not (self.username and self.password):
            raise ValueError(f"line {self.name}: username and password are needed")
        if self.caller_id == "fixed" and not self.caller_number:
            raise ValueError(f'{self.name}: caller_id = "fixed" needs caller_number')
        return self

    def may_reach(self, trunk: str) -> bool:
        """Whether a call that came in from this trunk may leave through ``trunk``."""
        return self.transit is True or (isinstance(self.transit, list) and trunk in self.transit)

    @property
    def login(self) -> str:
        """The user name sent in digest answers."""
        return self.auth_user or self.username

    @property
    def sip_domain(self) -> str:
        """The domain of the account: Request-URI of REGISTER, host of From and To."""
        return self.domain or self.host


def check_unique_names(trunks: list[TrunkSettings]) -> list[TrunkSettings]:
    seen: set[str] = set()
    for trunk in trunks:
        if trunk.name in seen:
            raise ValueError(f"trunk name {trunk.name!r} is used twice")
        seen.add(trunk.name)
    return trunks

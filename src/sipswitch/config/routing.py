"""Settings for call routing: ring and hunt groups, the dial plan, and black/white lists.

```toml
[[groups]]
number = "600"
name = "Sales"
strategy = "ring"          # ring (all at once), linear or circular (hunt)
members = ["200", "201"]
ring_timeout = 20          # per member for hunt groups, for the whole group when ringing all
overflow = "202"           # where the call goes when nobody answers (optional)

[[dialplan]]
prefix = "9"               # longest matching prefix wins
strip = 1                  # digits removed from the front
prepend = ""               # then added
target = "number"          # number (route the rewritten number), reject, or later trunk:NAME
status = 403               # for reject

[lists]
deny_callers = ["666"]     # caller number prefixes refused with 403
deny_called = ["0900"]     # dialled number prefixes refused with 403
allow_callers = []         # when not empty, only these caller prefixes may call
```
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NUMBER = re.compile(r"[0-9*#+]{1,32}")
PREFIX = re.compile(r"[0-9*#+]{0,32}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _number(value: str) -> str:
    if not NUMBER.fullmatch(value):
        raise ValueError(f"{value!r} is not a number (1 to 32 digits, *, # or +)")
    return value


class GroupSettings(_Section):
    number: str
    name: str = ""
    strategy: Literal["ring", "linear", "circular"] = "ring"
    members: list[str]
    ring_timeout: Annotated[int, Field(ge=1, le=600)] = 20
    overflow: str = ""

    @field_validator("number")
    @classmethod
    def _check_number(cls, value: str) -> str:
        return _number(value)

    @field_validator("members")
    @classmethod
    def _check_members(cls, value: list[str]) -> list[str]:
        if not 1 <= len(value) <= 256:
            raise ValueError("a group has 1 to 256 members")
        if len(set(value)) != len(value):
            raise ValueError("a member is listed twice")
        return [_number(member) for member in value]

    @field_validator("overflow")
    @classmethod
    def _check_overflow(cls, value: str) -> str:
        return _number(value) if value else ""


class DialRule(_Section):
    prefix: str
    strip: Annotated[int, Field(ge=0, le=32)] = 0
    prepend: str = ""
    target: str = "number"
    status: Annotated[int, Field(ge=400, le=699)] = 403

    @field_validator("prefix", "prepend")
    @classmethod
    def _check_digits(cls, value: str) -> str:
        if not PREFIX.fullmatch(value):
            raise ValueError(f"{value!r}: only digits, *, # and +")
        return value

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str) -> str:
        if value in ("number", "reject") or re.fullmatch(r"trunk:[A-Za-z0-9_.-]{1,64}", value):
            return value
        raise ValueError(f"{value!r}: expected number, reject or trunk:NAME")


class ListSettings(_Section):
    deny_callers: list[str] = Field(default_factory=list)
    deny_called: list[str] = Field(default_factory=list)
    allow_callers: list[str] = Field(default_factory=list)

    @field_validator("deny_callers", "deny_called", "allow_callers")
    @classmethod
    def _check_prefixes(cls, value: list[str]) -> list[str]:
        if len(value) > 10_000:
            raise ValueError("at most 10,000 prefixes")
        for item in value:
            if not item or not PREFIX.fullmatch(item):
                raise ValueError(f"{item!r}: a prefix of digits, *, # or +")
        return value


def check_unique_numbers(groups: list[GroupSettings]) -> list[GroupSettings]:
    seen: set[str] = set()
    for group in groups:
        if group.number in seen:
            raise ValueError(f"group number {group.number} is used twice")
        seen.add(group.number)
    return groups

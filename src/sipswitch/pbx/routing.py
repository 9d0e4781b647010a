"""Where a dialled number goes: an extension, a group, a rejection, or nowhere.

Order: the black and white lists, then an exact extension or group number, then the dial plan
(longest matching prefix first; a rule rewrites the number by stripping and prepending digits and
routes the result, rejects the call with its status, or sends it out through a trunk). Several
trunk rules with the same prefix are tried in the order written (failover). Numbers are checked
against a strict syntax before anything else, so nothing odd reaches a route. ``configure`` swaps
the groups, dial plan and lists when the settings are reloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config.routing import DialRule, GroupSettings, ListSettings
from ..config.trunks import TrunkSettings
from ..store import Extension
from .directory import ExtensionDirectory

_DIALLABLE = re.compile(r"[0-9*#+]{1,32}|[A-Za-z0-9._-]{1,32}")


@dataclass(frozen=True, slots=True)
class ToExtension:
    extension: Extension


@dataclass(frozen=True, slots=True)
class ToGroup:
    group: GroupSettings


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class ToTrunk:
    """Out through trunk ``trunk`` dialling ``number``; ``fallbacks`` are tried in order when
    the trunk is down, at its limit, or fails (the later dial plan rules of the same prefix)."""

    trunk: str
    number: str
    fallbacks: tuple[ToTrunk, ...] = ()


@dataclass(frozen=True, slots=True)
class ToApplication:
    """A number served by the server itself: ``name`` is the application ("ivr"), ``argument``
    what it runs (a script file)."""

    name: str
    argument: str


Destination = ToExtension | ToGroup | Reject | ToTrunk | ToApplication


@dataclass(frozen=True, slots=True)
class Route:
    """What ``Router.resolve`` decided, and how (for ``sipswitch route test`` and logs)."""

    destination: Destination
    number: str
    rule: DialRule | None = None


class Router:
    def __init__(
        self,
        directory: ExtensionDirectory,
        groups: list[GroupSettings],
        dialplan: list[DialRule],
        lists: ListSettings,
        applications: dict[str, ToApplication] | None = None,
    ) -> None:
        self.directory = directory
        self.applications = applications or {}
        self.configure(groups, dialplan, lists)

    def configure(
        self, groups: list[GroupSettings], dialplan: list[DialRule], lists: ListSettings
    ) -> None:
        """Use these groups, dial plan and lists from the next number resolved on (settings
        reloaded at run time). A call keeps what it was routed to: a group being rung keeps
        its members and timeouts."""
        self.groups = {group.number: group for group in groups}
        # Longest prefix first; among equal prefixes, the order written.
        self.rules = sorted(dialplan, key=lambda rule: -len(rule.prefix))
        self.lists = lists

    def check_caller(self, caller: str) -> Reject | None:
        lists = self.lists
        if any(caller.startswith(p) for p in lists.deny_callers):
            return Reject(403, "Caller not allowed")
        if lists.allow_callers and not any(caller.startswith(p) for p in lists.allow_callers):
            return Reject(403, "Caller not allowed")
        return None

    def resolve(self, number: str, caller: str | None = None) -> Route:
        if not _DIALLABLE.fullmatch(number):
            return Route(Reject(404, "Not Found"), number)
        if caller is not None:
            refused = self.check_caller(caller)
            if refused is not None:
                return Route(refused, number)
        if any(number.startswith(p) for p in self.lists.deny_called):
            return Route(Reject(403, "Number not allowed"), number)
        direct = self._direct(number)
        if direct is not None:
            return Route(direct, number)
        for rule in self.rules:
            if number.startswith(rule.prefix):
                return self._apply(rule, number)
        return Route(Reject(404, "Not Found"), number)

    def resolve_inbound(self, trunk: TrunkSettings, number: str, caller: str) -> Route:
        """Where a call that came in from ``trunk`` for ``number`` goes: the trunk's DID table
        first, else the number as dialled, else the trunk's default destination. Unless the
        trunk allows transit, such calls reach internal destinations only (toll fraud)."""
        mapped = trunk.dids.get(number)
        route = self.resolve(number if mapped is None else mapped, caller)
        destination = route.destination
        leaves = isinstance(destination, ToTrunk) and not any(
            trunk.may_reach(t.trunk) for t in (destination, *destination.fallbacks)
        )
        missing = isinstance(destination, Reject) and destination.status == 404
        if mapped is None and (leaves or missing) and trunk.default_destination:
            return self.resolve(trunk.default_destination, caller)
        if leaves:
            return Route(Reject(403, "No transit through this server"), route.number, route.rule)
        return route

    def _direct(self, number: str) -> Destination | None:
        extension = self.directory.lookup(number)
        if extension is not None and extension.enabled:
            return ToExtension(extension)
        group = self.groups.get(number)
        if group is not None:
            return ToGroup(group)
        return self.applications.get(number)

    def _apply(self, rule: DialRule, number: str) -> Route:
        rewritten = rule.prepend + number[rule.strip :]
        if rule.target == "reject":
            return Route(Reject(rule.status, "Rejected by the dial plan"), rewritten, rule)
        if rule.target.startswith("trunk:"):
            # Later trunk rules of the same prefix are the failover routes, in written order.
            position = next(i for i, r in enumerate(self.rules) if r is rule)
            fallbacks = tuple(
                _to_trunk(other, number)
                for other in self.rules[position + 1 :]
                if other.prefix == rule.prefix and other.target.startswith("trunk:")
            )
            return Route(
                ToTrunk(rule.target.split(":", 1)[1], rewritten, fallbacks), rewritten, rule
            )
        direct = self._direct(rewritten) if rewritten else None
        if direct is None:
            return Route(Reject(404, "Not Found"), rewritten, rule)
        return Route(direct, rewritten, rule)

    def describe(self, route: Route) -> str:
        """One line for humans: which rule matched and what it dials."""
        target = route.destination
        how = f"rule prefix {route.rule.prefix!r}" if route.rule else "direct"
        match target:
            case ToExtension(extension):
                what = f"extension {extension.number}"
            case ToGroup(group):
                what = f"{group.strategy} group {group.number} {group.members}"
            case ToTrunk(trunk, number, fallbacks):
                what = f"trunk {trunk} dialling {number}" + "".join(
                    f", else trunk {f.trunk} dialling {f.number}" for f in fallbacks
                )
            case Reject(status, reason):
                what = f"reject {status} {reason}"
            case ToApplication(name, argument):
                what = f"{name} {argument}"
        return f"{route.number}: {what} ({how})"


def _to_trunk(rule: DialRule, number: str) -> ToTrunk:
    return ToTrunk(rule.target.split(":", 1)[1], rule.prepend + number[rule.strip :])

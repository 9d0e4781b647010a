"""IVR-XML loading: bytes to a validated :class:`Flow`, with ``file:line:col`` on every error.

The XML is parsed by defusedxml (entity declarations and external entities are refused), then
checked completely before a call can meet it: names and references, methods and their
children, numbers, prompts (through a ``prompt_exists`` callback), variables, and loops of
actions that would never wait for the caller.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser

from sipswitch.ivr.errors import Position, ScriptError, ScriptIssue
from sipswitch.ivr.model import (
    ACTION_TYPES,
    BUILTIN_VARIABLES,
    DETECTIONS,
    DTMF_KEYS,
    METHODS,
    RAISED_BY,
    READ_ONLY_VARIABLES,
    VARIABLE_NAME,
    Action,
    CallToAction,
    CheckTimeAction,
    DigitMatch,
    EventRoute,
    Flow,
    GetDtmfAction,
    GotoAction,
    HangupAction,
    Period,
    PlayAction,
    RecordAction,
    SetVarAction,
    Template,
    VoicemailAction,
    WaitAction,
    parse_days,
    parse_time_ranges,
)

PromptCheck = Callable[[str], bool]
"""Says whether a prompt (its name without ``.wav``) exists in the voice folders; it may
instead raise ValueError saying what is wrong with the file (not found, wrong format)."""

MAX_SCRIPT_BYTES = 1024 * 1024
MAX_ISSUES = 50
MAX_NAME_LENGTH = 100
ROOT = "mssxml"
VERSION = "1"


def load_flow(path: Path | str, prompt_exists: PromptCheck | None = None) -> Flow:
    """Read and validate a script file; raises ScriptError (``file:line:col: message``)."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SCRIPT_BYTES + 1)
    except OSError as exc:
        raise ScriptError.at(
            Position(name, 1, 1), f"cannot read the file: {exc.strerror or exc}"
        ) from None
    return parse_flow(data, name, prompt_exists)


def parse_flow(
    data: bytes | str, file: str = "<script>", prompt_exists: PromptCheck | None = None
) -> Flow:
    """Validate a script given as bytes (or text); ``file`` names it in errors."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    locator = _Locator(file, raw)
    if len(raw) > MAX_SCRIPT_BYTES:
        raise ScriptError.at(
            locator.position(0), f"the script is larger than {MAX_SCRIPT_BYTES} bytes"
        )
    _check_encoding(raw, locator)
    root = _parse_xml(raw, locator)
    return _Checker(locator, prompt_exists).flow(root)


# ---------------------------------------------------------------------------- positions


class _Locator:
    """Turns byte offsets into 1-based line and character column."""

    def __init__(self, file: str, data: bytes) -> None:
        self.file = file
        self.data = data
        self._line_starts = [0] + [m.end() for m in re.finditer(rb"\n", data)]

    def position(self, offset: int) -> Position:
        offset = max(0, min(offset, len(self.data)))
        line = bisect.bisect_right(self._line_starts, offset)
        start = self._line_starts[line - 1]
        column = len(self.data[start:offset].decode("utf-8", errors="replace")) + 1
        return Position(self.file, line, column)


_ENCODING_DECL = re.compile(rb"""\A(?:\xef\xbb\xbf)?<\?xml[^>]*?encoding\s*=\s*["']([^"']*)["']""")


def _check_encoding(raw: bytes, locator: _Locator) -> None:
    declared = _ENCODING_DECL.match(raw)
    if declared is not None:
        encoding = declared.group(1).decode("ascii", errors="replace")
        if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise ScriptError.at(
                locator.position(declared.start(1)),
                f"the script must be UTF-8, not {encoding!r}",
            )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScriptError.at(locator.position(exc.start), "the script is not valid UTF-8") from None


# ---------------------------------------------------------------------------- XML to nodes


@dataclass
class _Node:
    tag: str
    attrs: dict[str, str]
    offset: int
    locator: _Locator
    children: list[_Node] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)

    @property
    def position(self) -> Position:
        return self.locator.position(self.offset)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def attr_position(self, name: str) -> Position:
        offset = _attribute_offsets(self.locator.data, self.offset).get(name)
        return self.locator.position(self.offset if offset is None else offset)


_TAG_OPEN = re.compile(rb"<[^\s/>]+")
_ATTRIBUTE = re.compile(rb"""\s+([^\s=/>]+)\s*=\s*(?:"[^"]*"|'[^']*')""")


def _attribute_offsets(data: bytes, offset: int) -> dict[str, int]:
    opening = _TAG_OPEN.match(data, offset)
    if opening is None:
        return {}
    found: dict[str, int] = {}
    pos = opening.end()
    while (attribute := _ATTRIBUTE.match(data, pos)) is not None:
        found.setdefault(attribute.group(1).decode("utf-8", errors="replace"), attribute.start(1))
        pos = attribute.end()
    return found


class _TreeBuilder:
    """The parser's target: keeps each element's byte offset (for positions), nothing else."""

    def __init__(self, locator: _Locator) -> None:
        self.locator = locator
        self.parser: Any = None
        self.stack: list[_Node] = []
        self.root: _Node | None = None

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        node = _Node(tag, dict(attrs), int(self.parser.CurrentByteIndex), self.locator)
        if self.stack:
            self.stack[-1].children.append(node)
        else:
            self.root = node
        self.stack.append(node)

    def end(self, tag: str) -> None:
        self.stack.pop()

    def data(self, text: str) -> None:
        if self.stack:
            self.stack[-1].text_parts.append(text)

    def close(self) -> _Node | None:
        return self.root


class _SafeParser(DefusedXMLParser):
    """defusedxml's parser, also refusing a DOCTYPE that points at an external DTD."""

    def __init__(self, target: _TreeBuilder) -> None:
        super().__init__(target=target, forbid_dtd=False, forbid_entities=True)
        self.parser.StartDoctypeDeclHandler = self._refuse_external_dtd

    def _refuse_external_dtd(
        self, name: str, sysid: str | None, pubid: str | None, has_internal_subset: bool
    ) -> None:
        if sysid or pubid:
            raise ExternalReferenceForbidden("", "", sysid or "", pubid or "")


_EXPAT_SUFFIX = re.compile(r":\s*line \d+, column \d+\s*$")


def _parse_xml(raw: bytes, locator: _Locator) -> _Node:
    builder = _TreeBuilder(locator)
    parser = _SafeParser(builder)
    builder.parser = parser.parser
    expat = parser.parser
    try:
        parser.feed(raw)
        root = parser.close()
    except ParseError as exc:
        message = _EXPAT_SUFFIX.sub("", str(exc))
        raise ScriptError.at(
            locator.position(expat.ErrorByteIndex), f"not well-formed XML: {message}"
        ) from None
    except EntitiesForbidden as exc:
        offset = raw.rfind(b"<!ENTITY", 0, expat.CurrentByteIndex + 1)
        kind = "external entity" if exc.sysid or exc.pubid else "entity"
        raise ScriptError.at(
            locator.position(offset if offset >= 0 else expat.CurrentByteIndex),
            f"{kind} declaration {exc.name!r} refused: IVR-XML allows no entity declarations",
        ) from None
    except ExternalReferenceForbidden as exc:
        offset = raw.rfind(b"<!DOCTYPE", 0, expat.CurrentByteIndex + 1)
        raise ScriptError.at(
            locator.position(offset if offset >= 0 else expat.CurrentByteIndex),
            f"external reference {exc.sysid or exc.pubid!r} refused: "
            "IVR-XML allows no external DTD or entities",
        ) from None
    except DefusedXmlException as exc:  # any other construct defusedxml refuses
        raise ScriptError.at(
            locator.position(expat.CurrentByteIndex), f"refused XML construct: {exc}"
        ) from None
    if not isinstance(root, _Node):
        raise ScriptError.at(locator.position(0), "no root element")
    return root


# ---------------------------------------------------------------------------- validation

_NUMBER = re.compile(r"[0-9]{1,7}(?:\.[0-9]{1,3})?")
_YES = ("yes", "true", "1", "on")
_NO = ("no", "false", "0", "off")
_MONITOR = ("monitor-events", "monitor-event")

# The child elements each method takes (besides <monitor-events>), and which may repeat.
_CHILDREN: dict[str, tuple[str, ...]] = {
    "play": ("voice", "repeat", "nextaction"),
    "getdtmf": (
        "voice",
        "maxdigits",
        "timeout",
        "interdigit-timeout",
        "terminator",
        "retries",
        "var",
        "match-digits",
        "nextaction",
    ),
    "callto": ("destination", "timeout", "callerid"),
    "goto": ("nextaction",),
    "hangup": (),
    "record": ("file", "maxtime", "terminator", "beep", "var", "nextaction"),
    "voicemail": ("mailbox",),
    "setvar": ("var", "nextaction"),
    "checktime": ("period", "nextaction"),
    "wait": ("seconds", "nextaction"),
}
_REPEATABLE: dict[str, tuple[str, ...]] = {
    "play": ("voice",),
    "getdtmf": ("voice",),
    "setvar": ("var",),
    "checktime": ("period",),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "play": ("voice",),
    "callto": ("destination",),
    "goto": ("nextaction",),
    "voicemail": ("mailbox",),
    "setvar": ("var",),
    "checktime": ("period",),
}
assert set(_CHILDREN) == set(METHODS)


class _Invalid(Exception):
    """One issue found while reading a value; the checker records it and goes on."""

    def __init__(self, position: Position, message: str) -> None:
        super().__init__(message)
        self.issue = ScriptIssue(position, message)


class _Checker:
    def __init__(self, locator: _Locator, prompt_exists: PromptCheck | None) -> None:
        self.locator = locator
        self.prompt_exists = prompt_exists
        self.issues: list[ScriptIssue] = []
        self.references: list[tuple[str, Position]] = []
        self.variable_uses: list[tuple[str, Position]] = []
        self.variables_set: set[str] = set(BUILTIN_VARIABLES)
        self._prompt_cache: dict[str, str] = {}

    def error(self, position: Position, message: str) -> None:
        self.issues.append(ScriptIssue(position, message))

    def fail(self) -> ScriptError:
        return ScriptError(self.issues[:MAX_ISSUES])

    # -- the document

    def flow(self, root: _Node) -> Flow:
        if root.tag != ROOT:
            raise ScriptError.at(
                root.position, f"the root element must be <{ROOT}>, not <{root.tag}>"
            )
        self.no_text(root)
        version = root.attrs.get("version")
        if version is None:
            self.error(root.position, f'<{ROOT}> needs version="{VERSION}"')
        elif version.strip() != VERSION:
            self.error(
                root.attr_position("version"),
                f"unsupported IVR-XML version {version!r} (this server reads version {VERSION})",
            )
        self.only_attributes(root, ("version",))

        actions: list[Action] = []
        names: dict[str, Position] = {}
        # Names of actions that fail to load still count, so references to them are not
        # reported as well.
        declared = {
            child.attrs["name"].strip()
            for child in root.children
            if child.tag == "action" and "name" in child.attrs
        }
        for child in root.children:
            if child.tag != "action":
                self.error(child.position, f"unknown element <{child.tag}> in <{ROOT}>")
                continue
            try:
                action = self.action(child)
            except _Invalid as exc:
                self.issues.append(exc.issue)
                continue
            if action is None:
                continue
            if action.name in names:
                self.error(
                    child.attr_position("name"),
                    f"duplicate action name {action.name!r} (first at line "
                    f"{names[action.name].line}, column {names[action.name].column})",
                )
                continue
            names[action.name] = action.position
            actions.append(action)
        if not actions and not self.issues:
            self.error(root.position, f"<{ROOT}> holds no <action>")

        for name, position in self.references:
            if name not in declared:
                self.error(position, f"nextaction {name!r} names no action")
        for name, position in self.variable_uses:
            if name not in self.variables_set:
                self.error(position, f"unknown variable ${{{name}}}: no action sets it")
        if self.issues:
            raise self.fail()
        flow = Flow(self.locator.file, tuple(actions))
        self.check_loops(flow)
        if self.issues:
            raise self.fail()
        return flow

    # -- one action

    def action(self, node: _Node) -> Action | None:
        self.no_text(node)
        self.only_attributes(node, ("name", "method"))
        name = node.attrs.get("name")
        method = node.attrs.get("method")
        if name is None or not name.strip():
            where = node.position if name is None else node.attr_position("name")
            raise _Invalid(where, "<action> needs a non-empty name")
        name = name.strip()
        if len(name) > MAX_NAME_LENGTH or any(ch.isspace() for ch in name):
            raise _Invalid(
                node.attr_position("name"),
                f"action name {name[:40]!r}: at most {MAX_NAME_LENGTH} characters, no spaces",
            )
        if method is None:
            raise _Invalid(node.position, f"action {name!r} needs a method")
        method = method.strip()
        if method not in ACTION_TYPES:
            raise _Invalid(
                node.attr_position("method"),
                f"unknown method {method!r} (known: {', '.join(METHODS)})",
            )

        allowed = _CHILDREN[method]
        repeatable = _REPEATABLE.get(method, ())
        children: dict[str, list[_Node]] = {}
        events: dict[str, EventRoute] = {}
        for child in node.children:
            if child.tag in _MONITOR:
                self.monitor(child, method, events)
                continue
            if child.tag not in allowed:
                self.error(child.position, f"unknown element <{child.tag}> in a {method} action")
                continue
            seen = children.setdefault(child.tag, [])
            if seen and child.tag not in repeatable:
                self.error(child.position, f"<{child.tag}> is given twice")
                continue
            seen.append(child)
        for required in _REQUIRED.get(method, ()):
            if required not in children:
                self.error(node.position, f"a {method} action needs <{required}>")
                return None

        common: dict[str, Any] = {"name": name, "position": node.position, "events": events}
        if "nextaction" in children:
            common["nextaction"] = self.reference(children["nextaction"][0])
        build = getattr(self, f"build_{method}")
        try:
            action: Action = build(children, common)
        except _Invalid as exc:
            self.issues.append(exc.issue)
            return None
        return action

    def build_play(self, c: dict[str, list[_Node]], common: dict[str, Any]) -> Action:
        return PlayAction(
            voices=self.voices(c.get("voice", [])),
            repeat=self.integer(c, "repeat", 1, 100, 1),
            **common,
        )

    def build_getdtmf(self, c: dict[str, list[_Node]], common: dict[str, Any]) -> Action:
        max_digits = self.integer(c, "maxdigits", 1, 32, 1)
        matches: list[DigitMatch] = []
        if "match-digits" in c:
            matches = self.matches(c["match-digits"][0], max_digits)
        return GetDtmfAction(
            voices=self.voices(c.get("voice", [])),
            max_digits=max_digits,
            first_timeout=self.seconds(c, "timeout", 0.1, 600, 5.0),
            inter_digit_timeout=self.seconds(c, "interdigit-timeout", 0.1, 60, 3.0),
            terminator=self.terminator(c),
            retries=self.integer(c, "retries", 0, 10, 2),
            var=self.assigned_variable(c, "dtmf"),
            matches=tuple(matches),
            **common,
        )

    def build_callto(self, c: dict[str, list[_Node]], common: dict[str, Any]) -> Action:
        destination = self.template(c["destination"][0])
        if not str(destination).strip():
            raise _Invalid(c["destination"][0].position, "<destination> is empty")
        caller_id = self.template(c["callerid"][0]) if "callerid" in c else None
        ring_timeout = self.seconds(c, "timeout", 1, 3600, 0.0) or None
        return CallToAction(
            destination=destination, ring_timeout=ring_timeout, caller_id=caller_id, **common
        )

    def build_goto(self, c: dict[str, list[_Node]], common: dict[str, Any]) -> Action:
        return GotoAction(**common)

    def build_hangup(self, c: dict[str, list[_Node]], common: dict[str, Any]) -> Action:
        return HangupAction(**common)

    def build_record(self, c: dict[str, list[_Node]], common: dict[str, Any]) -> Action:
        file = self.template(c["file"][0]) if "file" in c else None
        if file is not None and not str(file).strip():
            raise _Invalid(c["file"][0].position, "<file> is empty")
        beep = True
        if "beep" in c:
            word = self.leaf(c["beep"][0]).lower()
            if word not in _YES + _NO:
                raise _Invalid(c["beep"][0].position, f"<beep>: expected yes or no, got {word!r}")
            beep = word in _YES
        return RecordAction(
            file=file,
            max_seconds=self.seconds(c, "maxtime", 1, 3600, 60.0),
            terminator=self.terminator(c),
            beep=beep,
            var=self.assigned_variable(c, "recording"),
            **common,
        )

    def build_voicemail(self, c: dict[str, list[_Node]], common: dict[str, Any]) -> Action:
        mailbox = self.template(c["mailbox"][0])
        if not str(mailbox).strip():
            raise _Invalid(c["mailbox"][0].position, "<mailbox> is empty")
        return VoicemailAction(mailbox=mailbox, **common)

    def build_setvar(self, c: dict[str, list[_Node]], common: dict[str, Any]) -> Action:
        assignments: list[tuple[str, Template]] = []
        for node in c["var"]:
            self.only_attributes(node, ("name",))
            self.no_children(node)
            name = node.attrs.get("name")
            if name is None:
                raise _Invalid(node.position, '<var> needs a name="…" attribute')
            name = name.strip()
            self.check_variable_name(name, node.attr_position("name"))
            assignments.append((name, self.template(node, leaf=False)))
            self.variables_set.add(name)
        return SetVarAction(assignments=tuple(assignments), **common)

    def build_checktime(self, c: dict[str, list[_Node]], common: dict[str, Any]) -> Action:
        periods: list[Period] = []
        for node in c["period"]:
            self.no_children(node)
            self.no_text(node)
            self.only_attributes(node, ("days", "time", "nextaction"))
            days = frozenset(range(7))
            times: tuple[tuple[int, int], ...] = ()
            try:
                if "days" in node.attrs:
                    days = parse_days(node.attrs["days"])
            except ValueError as exc:
                self.error(node.attr_position("days"), str(exc))
                continue
            try:
                if "time" in node.attrs:
                    times = parse_time_ranges(node.attrs["time"])
            except ValueError as exc:
                self.error(node.attr_position("time"), str(exc))
                continue
            try:
                target = self.attribute_reference(node, "<period>")
            except _Invalid as exc:
                self.issues.append(exc.issue)
                continue
            periods.append(Period(target, node.position, days, times))
        return CheckTimeAction(periods=tuple(periods), **common)

    def build_wait(self, c: dict[str, list[_Node]], common: dict[str, Any]) -> Action:
        return WaitAction(seconds=self.seconds(c, "seconds", 0.1, 3600, 1.0), **common)

    # -- events and matches

    def monitor(self, node: _Node, method: str, events: dict[str, EventRoute]) -> None:
        if node.tag == "monitor-events":
            self.only_attributes(node, ())
            self.no_text(node)
            for child in node.children:
                if child.tag != "monitor-event":
                    self.error(child.position, f"unknown element <{child.tag}> in <monitor-events>")
                    continue
                self.monitor_event(child, method, events)
        else:
            self.monitor_event(node, method, events)

    def monitor_event(self, node: _Node, method: str, events: dict[str, EventRoute]) -> None:
        self.no_children(node)
        self.no_text(node)
        self.only_attributes(node, ("detection", "nextaction"))
        detection = node.attrs.get("detection")
        if detection is None:
            self.error(node.position, '<monitor-event> needs a detection="…" attribute')
            return
        detection = detection.strip()
        where = node.attr_position("detection")
        if detection not in DETECTIONS:
            self.error(where, f"unknown detection {detection!r} (known: {', '.join(DETECTIONS)})")
            return
        if detection not in RAISED_BY.get(method, ()):
            raisers = " and ".join(m for m, raised in RAISED_BY.items() if detection in raised)
            self.error(where, f"a {method} action never raises {detection!r} (only {raisers} does)")
            return
        if detection in events:
            self.error(where, f"a second monitor-event for {detection!r}")
            return
        try:
            target = self.attribute_reference(node, "<monitor-event>")
        except _Invalid as exc:
            self.issues.append(exc.issue)
            return
        events[detection] = EventRoute(detection, target, node.position)

    def matches(self, node: _Node, max_digits: int) -> list[DigitMatch]:
        self.only_attributes(node, ())
        self.no_text(node)
        found: list[DigitMatch] = []
        for child in node.children:
            if child.tag != "match":
                self.error(child.position, f"unknown element <{child.tag}> in <match-digits>")
                continue
            self.no_children(child)
            self.no_text(child)
            self.only_attributes(child, ("digits", "pattern", "nextaction"))
            has_digits, has_pattern = "digits" in child.attrs, "pattern" in child.attrs
            if has_digits == has_pattern:
                self.error(child.position, '<match> needs either digits="…" or pattern="…"')
                continue
            key = "digits" if has_digits else "pattern"
            value = child.attrs[key].strip()
            try:
                target = self.attribute_reference(child, "<match>")
                if has_digits:
                    match = DigitMatch.exact(value, target, child.position)
                else:
                    match = DigitMatch.of_pattern(value, target, child.position)
            except _Invalid as exc:
                self.issues.append(exc.issue)
                continue
            except ValueError as exc:
                self.error(child.attr_position(key), str(exc))
                continue
            if match.min_length > max_digits:
                self.error(
                    child.attr_position(key),
                    f"{match} can never match: it needs {match.min_length} keys and "
                    f"<maxdigits> is {max_digits}",
                )
                continue
            found.append(match)
        if not node.children:
            self.error(node.position, "<match-digits> holds no <match>")
        return found

    # -- loops

    def check_loops(self, flow: Flow) -> None:
        """Report every cycle made only of actions that never wait (goto, setvar, checktime)."""
        instant = [a for a in flow.actions if a.instant]
        graph = {a.name: [s.name for s in flow.successors(a) if s.instant] for a in instant}
        for component in _strongly_connected(graph):
            first = min(component, key=lambda name: flow.action(name).position)
            if len(component) == 1 and first not in graph[first]:
                continue
            path = _cycle_through(first, graph, set(component))
            route = " → ".join(path)
            self.error(
                flow.action(first).position,
                f"actions {route} loop forever without waiting for the caller",
            )

    # -- values

    def leaf(self, node: _Node) -> str:
        self.only_attributes(node, ())
        self.no_children(node)
        return node.text.strip()

    def voices(self, nodes: list[_Node]) -> tuple[str, ...]:
        """Every prompt name that is fine; each one that is not is reported."""
        names: list[str] = []
        for node in nodes:
            try:
                names.append(self.voice(node))
            except _Invalid as exc:
                self.issues.append(exc.issue)
        return tuple(names)

    def voice(self, node: _Node) -> str:
        name = self.leaf(node)
        if name.lower().endswith(".wav"):
            name = name[:-4]
        if not name:
            raise _Invalid(node.position, "<voice> is empty")
        parts = name.split("/")
        if (
            "${" in name
            or "\\" in name
            or any(not part or part.startswith(".") for part in parts)
            or len(name) > MAX_NAME_LENGTH
            or any(not ch.isprintable() for ch in name)
        ):
            raise _Invalid(
                node.position,
                f"<voice> {name[:40]!r}: a prompt name in the voice folder "
                "(a sub-folder is fine; no '..', no variables)",
            )
        if self.prompt_exists is not None:
            if name not in self._prompt_cache:
                self._prompt_cache[name] = self.check_prompt(name)
            problem = self._prompt_cache[name]
            if problem:
                raise _Invalid(node.position, problem)
        return name

    def check_prompt(self, name: str) -> str:
        """Why the prompt cannot be played, or "" when it can."""
        assert self.prompt_exists is not None
        try:
            if self.prompt_exists(name):
                return ""
        except ValueError as exc:  # the callback may say what is wrong with the file
            return f"prompt {name!r}: {exc}"
        return f"prompt {name!r} does not exist in the voice folder"

    def template(self, node: _Node, *, leaf: bool = True) -> Template:
        text = self.leaf(node) if leaf else node.text.strip()
        try:
            template = Template.parse(text)
        except ValueError as exc:
            raise _Invalid(node.position, f"<{node.tag}>: {exc}") from None
        self.variable_uses.extend((name, node.position) for name in template.variables)
        return template

    def reference(self, node: _Node) -> str:
        name = self.leaf(node)
        if not name:
            raise _Invalid(node.position, f"<{node.tag}> is empty")
        self.references.append((name, node.position))
        return name

    def attribute_reference(self, node: _Node, what: str) -> str:
        name = node.attrs.get("nextaction")
        if name is None or not name.strip():
            where = node.position if name is None else node.attr_position("nextaction")
            raise _Invalid(where, f'{what} needs a nextaction="…" attribute')
        self.references.append((name.strip(), node.attr_position("nextaction")))
        return name.strip()

    def number(self, node: _Node, low: float, high: float, *, integer: bool) -> float:
        text = self.leaf(node)
        kind = "a whole number" if integer else "seconds"
        pattern_ok = _NUMBER.fullmatch(text) is not None and (not integer or "." not in text)
        value = float(text) if pattern_ok else None
        if value is None or not low <= value <= high:
            shown = text if len(text) <= 20 else text[:17] + "..."
            raise _Invalid(
                node.position,
                f"<{node.tag}>: expected {kind} from {low:g} to {high:g}, got {shown!r}",
            )
        return value

    def integer(
        self, c: dict[str, list[_Node]], tag: str, low: int, high: int, default: int
    ) -> int:
        if tag not in c:
            return default
        return int(self.number(c[tag][0], low, high, integer=True))

    def seconds(
        self, c: dict[str, list[_Node]], tag: str, low: float, high: float, default: float
    ) -> float:
        if tag not in c:
            return default
        return self.number(c[tag][0], low, high, integer=False)

    def terminator(self, c: dict[str, list[_Node]]) -> str | None:
        if "terminator" not in c:
            return "#"
        node = c["terminator"][0]
        key = self.leaf(node)
        if key.lower() in ("", "none"):
            return None
        if len(key) != 1 or key not in DTMF_KEYS:
            raise _Invalid(
                node.position, f"<terminator>: expected one key (0-9, *, #) or none, got {key!r}"
            )
        return key

    def assigned_variable(self, c: dict[str, list[_Node]], default: str) -> str:
        if "var" not in c:
            return default
        node = c["var"][0]
        name = self.leaf(node)
        self.check_variable_name(name, node.position)
        self.variables_set.add(name)
        return name

    def check_variable_name(self, name: str, position: Position) -> None:
        if not VARIABLE_NAME.fullmatch(name):
            raise _Invalid(
                position,
                f"{name[:40]!r} is not a variable name (a letter or _, then letters, digits, "
                "_ . -; at most 64)",
            )
        if name in READ_ONLY_VARIABLES:
            raise _Invalid(position, f"${{{name}}} is set by the call and cannot be assigned")

    # -- shape

    def only_attributes(self, node: _Node, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for name in node.attrs:
            if name not in allowed:
                what = (
                    f"<{node.tag}> takes no attributes"
                    if not allowed
                    else (f"<{node.tag}> takes only " + ", ".join(allowed))
                )
                self.error(node.attr_position(name), f"unknown attribute {name!r}: {what}")

    def no_children(self, node: _Node) -> None:
        for child in node.children:
            self.error(child.position, f"unknown element <{child.tag}> in <{node.tag}>")

    def no_text(self, node: _Node) -> None:
        text = node.text.strip()
        if text:
            self.error(node.position, f"unexpected text {text[:30]!r} in <{node.tag}>")


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (a script may hold many actions)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            edges = graph[node]
            if i < len(edges):
                work.append((node, i + 1))
                succ = edges[i]
                if succ not in index:
                    work.append((succ, 0))
                elif succ in on_stack:
                    low[node] = min(low[node], index[succ])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _cycle_through(start: str, graph: dict[str, list[str]], members: set[str]) -> list[str]:
    """The shortest path from ``start`` back to itself inside one component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in graph[node]:
                if succ not in members:
                    continue
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if succ not in previous:
                    previous[succ] = node
                    following.append(succ)
        frontier = following
    return [start, start]

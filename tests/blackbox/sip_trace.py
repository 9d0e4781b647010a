"""The SIP messages a SIPp run sent and received, read back from its ``-trace_msg`` file, so a
test can compare what one peer sent with what another received (an SDP offer passed on by
the server, a NOTIFY body, the headers of a relayed request)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .sipp import SippResult

_SEPARATOR = re.compile(r"^-{20,} .*$", re.M)
_DIRECTION = re.compile(r"^\w+ message (sent|received)", re.M)


@dataclass(frozen=True)
class TracedMessage:
    direction: str  # "sent" or "received"
    start_line: str
    headers: list[tuple[str, str]]
    body: str

    @property
    def method(self) -> str | None:
        """The method of a request; None for a response."""
        first = self.start_line.split(" ", 1)[0]
        return None if first.startswith("SIP/") else first

    @property
    def status(self) -> int | None:
        parts = self.start_line.split(" ", 2)
        return int(parts[1]) if parts[0].startswith("SIP/") and len(parts) > 1 else None

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    @property
    def cseq_method(self) -> str | None:
        value = self.header("CSeq")
        return value.split()[-1] if value else None

    def audio_port(self) -> int | None:
        """The port of the body's ``m=audio`` line (an SDP offer or answer), if any."""
        found = re.search(r"^m=audio (\d+) ", self.body, re.M)
        return int(found.group(1)) if found else None


def messages(result: SippResult | Path) -> list[TracedMessage]:
    """Every message in a run's trace, in order."""
    path = result if isinstance(result, Path) else result.workdir / "messages.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    found: list[TracedMessage] = []
    for block in _SEPARATOR.split(text):
        direction = _DIRECTION.search(block)
        if direction is None:
            continue
        rest = block[direction.end() :].split("\n", 1)
        lines = rest[1].replace("\r\n", "\n").lstrip("\n") if len(rest) > 1 else ""
        head, _, body = lines.partition("\n\n")
        head_lines = head.split("\n")
        headers = []
        for line in head_lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers.append((name.strip(), value.strip()))
        found.append(TracedMessage(direction.group(1), head_lines[0].strip(), headers, body))
    return found


def find(
    result: SippResult | Path,
    direction: str,
    *,
    method: str | None = None,
    status: int | None = None,
    cseq_method: str | None = None,
) -> list[TracedMessage]:
    """The traced messages matching all the criteria given."""
    return [
        m
        for m in messages(result)
        if m.direction == direction
        and (method is None or m.method == method)
        and (status is None or m.status == status)
        and (cseq_method is None or m.cseq_method == cseq_method)
    ]

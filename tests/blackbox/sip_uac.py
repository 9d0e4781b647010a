"""A caller on a raw UDP socket that picks its own Call-IDs, for tests that need a call to land
on a given server process (``[sip] workers``): INVITE answered with digest authentication,
ACK of a failure, CANCEL. Requests are retransmitted until answered; every wait is bounded."""

from __future__ import annotations

import itertools
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sipswitch.sip.auth import build_authorization, choose_challenge
from sipswitch.sip.message import Response
from sipswitch.sip.parser import MessageError, parse_datagram

from .ports import HOST

RETRANSMIT_S = 0.5  # T1: a request is sent again until the first response comes


@dataclass
class Invite:
    """One INVITE transaction of a call and the responses it got."""

    number: str
    call_id: str
    cseq: int
    branch: str
    from_tag: str
    authorization: str | None = None
    responses: list[Response] = field(default_factory=list)

    @property
    def statuses(self) -> list[int]:
        return [response.status for response in self.responses]

    @property
    def final(self) -> Response | None:
        return next((r for r in self.responses if r.status >= 200), None)


class UdpCaller:
    """Extension ``user`` calling through the server at ``server_port`` on 127.0.0.1."""

    def __init__(self, server_port: int, user: str, password: str) -> None:
        self.server = (HOST, server_port)
        self.user = user
        self.password = password
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = int(self.sock.getsockname()[1])
        self._branches = itertools.count(1)
        self._pending: dict[tuple[str, int, str], tuple[bytes, float]] = {}  # unanswered
        self._transactions: dict[tuple[str, int, str], Invite] = {}  # (call_id, cseq, method)

    def uri(self, number: str) -> str:
        return f"sip:{number}@{HOST}:{self.server[1]}"

    # --- requests ---
    def invite(self, number: str, call_id: str) -> Invite:
        """Sends a first INVITE (no credentials)."""
        branch = f"z9hG4bK-{call_id}-{next(self._branches)}"
        invite = Invite(number, call_id, 1, branch, secrets.token_hex(4))
        self._send_invite(invite)
        return invite

    def authenticate(self, challenged: Invite) -> Invite:
        """After a 407: its ACK, and the INVITE of the same call again with credentials (made,
        not sent)."""
        final = challenged.final
        assert final is not None and final.status == 407, challenged.statuses
        self.ack(challenged)
        challenge = choose_challenge(final.headers.get_all("Proxy-Authenticate"))
        assert challenge is not None, final.to_bytes()
        uri = self.uri(challenged.number)
        invite = Invite(
            challenged.number,
            challenged.call_id,
            challenged.cseq + 1,
            f"z9hG4bK-{challenged.call_id}-{next(self._branches)}",
            challenged.from_tag,
            build_authorization(challenge, "INVITE", uri, self.user, self.password),
        )
        return invite

    def send(self, invite: Invite) -> None:
        """Sends an INVITE made by ``authenticate``."""
        self._send_invite(invite)

    def ack(self, invite: Invite) -> None:
        """The ACK of a failure response (same branch, To with the response's tag)."""
        final = invite.final
        assert final is not None and final.status >= 300, invite.statuses
        to = final.headers.get("To")
        self.sock.sendto(self._request("ACK", invite, invite.cseq, to), self.server)

    def cancel(self, invite: Invite) -> None:
        """CANCEL of an INVITE that has had a provisional response."""
        data = self._request("CANCEL", invite, invite.cseq, None)
        self._transactions[(invite.call_id, invite.cseq, "CANCEL")] = invite
        self._pending[(invite.call_id, invite.cseq, "CANCEL")] = (data, time.monotonic())
        self.sock.sendto(data, self.server)

    def _send_invite(self, invite: Invite) -> None:
        key = (invite.call_id, invite.cseq, "INVITE")
        data = self._request("INVITE", invite, invite.cseq, None)
        self._transactions[key] = invite
        self._pending[key] = (data, time.monotonic())
        self.sock.sendto(data, self.server)

    def _request(self, method: str, invite: Invite, cseq: int, to: str | None) -> bytes:
        uri = self.uri(invite.number)
        sdp = (
            "v=0\r\n"
            f"o=uac {cseq} {cseq} IN IP4 {HOST}\r\n"
            "s=-\r\n"
            f"c=IN IP4 {HOST}\r\n"
            "t=0 0\r\n"
            "m=audio 4000 RTP/AVP 0\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
        ).encode()
        body = sdp if method == "INVITE" else b""
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {HOST}:{self.port};branch={invite.branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{HOST}:{self.server[1]}>;tag={invite.from_tag}",
            f"To: {to}" if to else f"To: <{uri}>",
            f"Call-ID: {invite.call_id}",
            f"CSeq: {cseq} {method}",
        ]
        if method == "INVITE":
            lines.append(f"Contact: <sip:{self.user}@{HOST}:{self.port}>")
            if invite.authorization:
                lines.append(f"Proxy-Authorization: {invite.authorization}")
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    # --- responses ---
    def wait(self, condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
        """Reads responses until ``condition()`` holds, retransmitting unanswered requests
        meanwhile; AssertionError naming ``what`` and the responses so far at the deadline."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            now = time.monotonic()
            if now >= deadline:
                seen = {i.call_id: i.statuses for i in self._transactions.values()}
                raise AssertionError(f"not within {timeout_s} s: {what}; responses: {seen}")
            for key, (data, sent) in list(self._pending.items()):
                if now - sent >= RETRANSMIT_S:
                    self.sock.sendto(data, self.server)
                    self._pending[key] = (data, now)
            self.sock.settimeout(min(RETRANSMIT_S / 2, max(0.01, deadline - now)))
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self._received(data)

    def wait_final(self, invites: list[Invite], timeout_s: float = 10.0) -> None:
        """Until each of ``invites`` has its final response."""
        self.wait(lambda: all(i.final is not None for i in invites), "final responses", timeout_s)

    def _received(self, data: bytes) -> None:
        try:
            message = parse_datagram(data)
        except MessageError:
            return
        if not isinstance(message, Response):
            return  # the server's requests to a caller (none while a call is not answered)
        key = (message.call_id, message.cseq.number, message.cseq.method)
        self._pending.pop(key, None)
        invite = self._transactions.get(key)
        if invite is None or message.cseq.method != "INVITE":
            return
        final = invite.final
        if final is None:
            invite.responses.append(message)
        elif final.status >= 300 and message.status >= 300:
            self.ack(invite)  # the failure again: our ACK was lost

    def close(self) -> None:
        self.sock.close()

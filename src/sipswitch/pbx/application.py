"""Calls answered by the server itself, for applications such as IVR flows.

An ``ApplicationCall`` is the caller's leg of a ``Call`` whose destination is an application:
the server answers with its own media endpoint (prompts, tones, digits, recording), and
``callto`` reaches another destination through the same routing and ringing as a direct call.
When the callee answers, the two phones are joined by third-party call control (RFC 3725 flow
I): the callee is invited without an offer, its offer goes to the caller in a re-INVITE, and the
caller's answer comes back to the callee in the ACK, so audio then flows between the phones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Protocol

from ..media.dtmf import parse_info
from ..media.ports import PortAllocator
from ..media.session import MediaSession
from ..sdp import negotiate
from ..sdp.model import SdpError
from ..sdp.model import parse as parse_sdp
from ..sip.message import Request, Response
from ..sip.transaction import ClientTransaction, ServerTransaction

if TYPE_CHECKING:
    from .b2bua import Call, OutboundLeg, Outcome

log = logging.getLogger("sipswitch.calls")


class Application(Protocol):
    """What runs a call answered by the server (an IVR flow, voicemail, ...)."""

    async def run(self, call: ApplicationCall, argument: str) -> None: ...


class ApplicationCall:
    def __init__(self, call: Call, allocator: PortAllocator) -> None:
        self.call = call
        self.allocator = allocator
        self.media: MediaSession | None = None
        self.ended = asyncio.Event()  # the caller hung up or the call is over
        self._outcome: asyncio.Future[Outcome] | None = None
        self._local_sdp_version = 0

    @property
    def caller(self) -> str:
        return self.call.caller.number

    @property
    def called(self) -> str:
        return self.call.callee.number

    @property
    def answered(self) -> bool:
        return self.media is not None

    # --- answering ---------------------------------------------------------------------------
    async def answer(self) -> None:
        """Answer the caller with the server's own media; no-op once answered."""
        if self.media is not None or self.ended.is_set():
            return
        call = self.call
        core = call.core
        txn = call.inbound.txn
        request = txn.request
        if not request.body:
            raise ApplicationError(488, "An offer is needed to reach this number")
        bind, advertise = core.media_addresses(call.inbound.source)
        try:
            offer = parse_sdp(request.body)
            media = await MediaSession.open(self.allocator, bind, core.clock)
            answer, choice = negotiate.answer(offer, advertise, media.local_port)
        except SdpError as exc:
            raise ApplicationError(exc.status, exc.reason) from None
        media.set_remote(
            choice.host,
            choice.port,
            choice.payload_type,
            choice.telephone_event_pt,
            codec=choice.codec,
            send=not choice.on_hold,
        )
        self.media = media
        call.server_answered(answer.serialize())

    # --- caller-side events ------------------------------------------------------------------
    def caller_request(self, request: Request, txn: ServerTransaction | None) -> None:
        """In-dialog requests from the caller while the server holds the call."""
        call = self.call
        dialog = call.inbound.dialog
        if txn is None or dialog is None:
            return
        tag = dialog.local_tag
        if request.method == "BYE":
            call.core.respond(txn, 200, to_tag=tag)
            self.hang_up_locally("caller")
        elif request.method == "INFO":
            digit = _info_digit(request)
            if digit and self.media is not None:
                self.media.feed_info_dtmf(digit)
            call.core.respond(txn, 200, to_tag=tag)
        elif request.method in ("INVITE", "UPDATE") and self.media is not None:
            # A session refresh or hold from the caller: keep our media as it is.
            self._local_sdp_version += 1
            call.core.respond(
                txn,
                200,
                to_tag=tag,
                body=call.server_sdp or b"",
                headers={"Content-Type": "application/sdp"} if call.server_sdp else None,
            )
        elif request.method in ("OPTIONS", "NOTIFY", "MESSAGE"):
            call.core.respond(txn, 200, to_tag=tag)
        else:
            call.core.respond(txn, 405, to_tag=tag)

    def hang_up_locally(self, side: str) -> None:
        """The call is over while the application ran: stop everything it waits for."""
        self.close_media()
        if self._outcome is not None and not self._outcome.done():
            from .b2bua import Outcome

            self._outcome.set_result(Outcome.FAILURE)
        self.ended.set()
        self.call.end_application(side)

    def close_media(self) -> None:
        if self.media is not None:
            self.media.close()
            self.media = None

    async def hangup(self) -> None:
        """The application ends the call (BYE to the caller, or a final answer if unanswered)."""
        call = self.call
        if call.state == "ended":
            return
        if self.media is None:
            call.finish_unanswered(480, hangup_side="system")
        else:
            call.hangup(None, "system")
        self.close_media()
        self.ended.set()

    # --- reaching another destination --------------------------------------------------------
    async def callto(self, number: str, ring_timeout: float | None = None) -> Outcome:
        """Ring ``number`` (routing, forwarding and groups apply). ``answered`` returns when the
        joined call has ended; any other outcome leaves the caller with the application."""
        from .b2bua import Outcome

        call = self.call
        if self.ended.is_set():
            return Outcome.FAILURE
        loop = asyncio.get_running_loop()
        self._outcome = loop.create_future()
        ringback: asyncio.Task[object] | None = None
        if self.media is not None:
            ringback = asyncio.ensure_future(self.media.play_tone())
        try:
            call.place_callto(number, ring_timeout)
            outcome = await self._outcome
        finally:
            if ringback is not None:
                if self.media is not None:
                    self.media.stop_playback()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ringback
            self._outcome = None
        if outcome is Outcome.ANSWERED:
            await self.ended.wait()
        return outcome

    def callto_finished(self, outcome: Outcome) -> bool:
        """Called by the call when an attempt started by ``callto`` ends; False if none waits."""
        if self._outcome is None or self._outcome.done():
            return False
        self._outcome.set_result(outcome)
        return True

    def join(self, leg: OutboundLeg, response: Response) -> None:
        """The callee answered (with an offer, since it was invited without one): re-INVITE the
        caller with that offer, then acknowledge the callee with the caller's answer."""
        call = self.call
        dialog = call.inbound.dialog
        if dialog is None or leg.dialog is None:
            return
        call.relay_join(leg)

        def send(body: bytes | None) -> None:
            host, port = call.core.local_address(dialog.peer)
            reinvite = dialog.create_request(
                "INVITE", host, port, body=body or b"", content_type="application/sdp"
            )
            reinvite.headers.add(
                "Contact", f"<{call.core.contact_uri(call.callee.number, dialog.peer)}>"
            )
            call.core.transactions.send_request(
                reinvite, dialog.peer, _JoinListener(self, leg, reinvite)
            )

        call.pass_sdp("offer", leg, call.inbound, response, send)

    def joined(self, leg: OutboundLeg, reinvite: Request, response: Response) -> None:
        from .b2bua import Outcome

        call = self.call
        dialog = call.inbound.dialog
        assert dialog is not None and leg.dialog is not None
        host, port = call.core.local_address(dialog.peer)
        ack = dialog.create_request("ACK", host, port, cseq=reinvite.cseq.number)
        call.core.transactions.send_stateless(ack, dialog.peer)
        if response.status >= 300 or not response.body:
            log.info(
                "call %s: the caller refused the joined media (%d)", call.call_id, response.status
            )
            call.hangup(None, "system")
            self.callto_finished(Outcome.FAILURE)
            return
        peer = leg.dialog

        def send(body: bytes | None) -> None:
            host, port = call.core.local_address(peer.peer)
            leg.ack = peer.create_request(
                "ACK",
                host,
                port,
                cseq=leg.request.cseq.number,
                body=body or b"",
                content_type="application/sdp",
            )
            call.core.transactions.send_stateless(leg.ack, peer.peer)

        call.pass_sdp("answer", call.inbound, leg, response, send)
        self.close_media()
        call.joined_by_application(leg)
        self.callto_finished(Outcome.ANSWERED)


class _JoinListener:
    def __init__(self, app: ApplicationCall, leg: OutboundLeg, reinvite: Request) -> None:
        self.app = app
        self.leg = leg
        self.reinvite = reinvite

    def on_response(self, response: Response, txn: ClientTransaction) -> None:
        if response.status >= 200:
            self.app.joined(self.leg, self.reinvite, response)

    def on_timeout(self, txn: ClientTransaction) -> None:
        from .b2bua import Outcome

        self.app.call.hangup(None, "system")
        self.app.callto_finished(Outcome.FAILURE)

    def on_transport_error(self, txn: ClientTransaction) -> None:
        self.on_timeout(txn)


class ApplicationError(Exception):
    """The server cannot take the call (no offer, no common codec, no media port)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _info_digit(request: Request) -> str | None:
    try:
        return parse_info(request.content_type or "", request.body)
    except ValueError:
        return None

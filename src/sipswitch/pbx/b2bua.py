"""Back-to-back calls between extensions: two kinds of legs and the call that connects them.

The *entity* part is ``InboundLeg`` (the caller's dialog, where sipswitch is the UAS) and
``OutboundLeg`` (one per contact rung, where sipswitch is the UAC). The *logic* part is ``Call``:
it forks the INVITE to every registered contact, relays provisional and final responses, picks
the first 2xx and cancels the rest, then relays in-dialog requests (BYE, re-INVITE, UPDATE, INFO,
MESSAGE, ...) between the two dialogs. ``CallManager`` admits new calls and routes in-dialog
requests to their leg. Later features (limits, forwarding, IVR, trunks, media relay) hook in at
``CallManager.place_call`` and at the leg level.

Trunks: a ``ToTrunk`` destination is one ``OutboundLeg`` toward the trunk's address (answering its
401/407 once with the trunk's credentials), failing over to the next trunk of the route when one
is down, at its limit or fails with 5xx. INVITEs from a trunk's address (``TrunkService.identify``)
are taken without digest authentication and routed by called number; they may reach a trunk
again only when the trunk allows transit. Trunk calls are counted in the profiles
``trunk:NAME:in`` and ``trunk:NAME:out`` of ``CallLimits``.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..config.routing import GroupSettings
from ..config.trunks import TrunkSettings
from ..media.ports import PortAllocator
from ..media.relay_backend import Leg, RelayBackend, RelayError
from ..sip.auth import build_authorization, choose_challenge
from ..sip.clock import TimerHandle
from ..sip.dialog import Dialog, new_call_id
from ..sip.errors import SipError
from ..sip.headers import parse_name_addr, quote
from ..sip.message import Headers, Request, Response
from ..sip.probe import new_request
from ..sip.transaction import ClientTransaction, ServerTransaction, new_tag, new_via
from ..sip.transport.base import Address
from ..sip.uri import SipUri, format_host, parse_uri
from ..store import Binding, CdrRecord, Extension, ExtensionStore
from .application import Application, ApplicationCall, ApplicationError
from .cdr import CdrRecorder
from .core import ALLOW_HEADER, PbxCore
from .limits import CallLimits
from .location import LocationService
from .media_path import Kind, MediaPath, Side, is_sdp, readdress, relay_reason, sdp_host
from .routing import (
    Destination,
    Reject,
    Router,
    ToApplication,
    ToExtension,
    ToGroup,
    ToTrunk,
)

log = logging.getLogger("sipswitch.calls")

# Headers carried from one leg to the other with a relayed request or response body.
_BODY_HEADERS = ("Content-Type", "Content-Disposition", "Content-Encoding")
_RELAYED_REQUEST_HEADERS = ("Event", "Subscription-State", "Info-Package", "Subject")
_MEDIA_TYPES = ("application/sdp", "multipart/mixed")
_FEATURE_CODE = re.compile(r"\*(9[0-3])(?:\*([0-9]{1,32}))?#?")
_FEATURE_KINDS = {"93": "always", "90": "busy", "92": "no_answer", "91": "unreachable"}
VOICEMAIL_ACCESS_CODE = "*97"
FEATURE_CONFIRM = "feature-confirm"  # the application that confirms a star code by voice
# A caller number taken from a trunk's From or P-Asserted-Identity; anything else is anonymous.
_TRUNK_CALLER = re.compile(r"[A-Za-z0-9+*#._-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Seconds a trunk has to answer an INVITE at all (100 Trying is due within 200 ms): a trunk that
# stays silent is given up and the next one tried, rather than waiting for Timer B (32 s).
TRUNK_RESPONSE_TIMEOUT = 4.0


def trunk_profile(name: str, direction: str) -> str:
    """The ``CallLimits`` profile counting a trunk's calls in one direction ("in" or "out")."""
    return f"trunk:{name}:{direction}"


class TrunkService(Protocol):
    """What calls need from the trunks (``trunk.manager.TrunkManager``): which trunk a request
    came from, a trunk's settings by name, and where to send to it (None while it is down)."""

    def identify(self, source: Address) -> TrunkSettings | None: ...

    def lookup(self, name: str) -> TrunkSettings | None: ...

    def destination(self, name: str) -> Address | None: ...


@dataclass(slots=True)
class CallParty:
    number: str
    display: str


class InboundLeg:
    """The caller's side: sipswitch answers as a UAS."""

    def __init__(self, call: Call, txn: ServerTransaction, source: Address) -> None:
        self.call = call
        self.txn = txn
        self.source = source
        self.tag = new_tag()
        self.dialog: Dialog | None = None

    def ensure_dialog(self) -> Dialog:
        if self.dialog is None:
            self.dialog = Dialog.as_uas(self.txn.request, self.tag, self.source)
            self.call.manager.register_dialog(self.dialog, self)
        return self.dialog


class OutboundLeg:
    """One contact of the callee, or a trunk: sipswitch calls it as a UAC."""

    def __init__(
        self,
        call: Call,
        binding: Binding | None,
        destination: Address,
        request: Request,
        attempt: Attempt,
        number: str,
        trunk: TrunkSettings | None = None,
    ) -> None:
        self.call = call
        self.binding = binding
        self.destination = destination
        self.request = request
        self.attempt = attempt
        self.number = number  # the extension this contact belongs to (a trunk: its profile)
        self.trunk = trunk
        self.authenticated = False  # a trunk's challenge was answered once already
        self.responded = False  # any response came back
        self.reason: str | None = None  # of the final response, passed on for trunk calls
        self.txn: ClientTransaction | None = None
        self.dialog: Dialog | None = None
        self.final_status: int | None = None
        self.ack: Request | None = None

    # ClientListener
    def on_response(self, response: Response, txn: ClientTransaction) -> None:
        self.responded = True
        self.call.on_outbound_response(self, response)

    def on_timeout(self, txn: ClientTransaction) -> None:
        self.call.on_outbound_failure(self, 408)

    def on_transport_error(self, txn: ClientTransaction) -> None:
        self.call.on_outbound_failure(self, 503)


class _RelayListener:
    """Relays the response to an in-dialog request sent on one leg back to the other leg."""

    def __init__(self, call: Call, origin: ServerTransaction, sent: Request) -> None:
        self.call = call
        self.origin = origin
        self.sent = sent

    def on_response(self, response: Response, txn: ClientTransaction) -> None:
        self.call.relay_response(self.origin, self.sent, response)

    def on_timeout(self, txn: ClientTransaction) -> None:
        if not self.origin.terminated and self.origin.last_response is None:
            self.call.core.respond(self.origin, 408)

    def on_transport_error(self, txn: ClientTransaction) -> None:
        if not self.origin.terminated and self.origin.last_response is None:
            self.call.core.respond(self.origin, 503)


class _IgnoreResponses:
    def on_response(self, response: Response, txn: ClientTransaction) -> None:
        pass

    def on_timeout(self, txn: ClientTransaction) -> None:
        pass

    def on_transport_error(self, txn: ClientTransaction) -> None:
        pass


_IGNORE = _IgnoreResponses()


class Outcome(enum.Enum):
    """How an attempt to reach a destination ended (the IVR's monitor events use the same)."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    UNREACHABLE = "unreachable"
    REJECT = "reject"
    FAILURE = "failure"


# The status the caller gets when an outcome ends the call.
OUTCOME_STATUS = {
    Outcome.BUSY: 486,
    Outcome.NO_ANSWER: 408,
    Outcome.UNREACHABLE: 480,
    Outcome.REJECT: 603,
}


class Attempt:
    """Contacts rung at the same time, with one ring timeout; ``done`` gets the outcome."""

    def __init__(
        self,
        call: Call,
        members: list[str],
        done: Callable[[Outcome, int], None],
    ) -> None:
        self.call = call
        self.members = members
        self.done = done
        self.forks: list[OutboundLeg] = []
        self.failures: list[int] = []
        self.rang = False
        self.timer: TimerHandle | None = None
        self.over = False

    def finish(self, outcome: Outcome, status: int) -> None:
        if self.over:
            return
        self.over = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if outcome is not Outcome.ANSWERED:
            for number in self.members:
                self.call.manager.limits.leave(self.call, number)
        self.done(outcome, status)

    def cancel_forks(self, keep: OutboundLeg | None = None) -> None:
        for leg in self.forks:
            if leg is not keep and leg.txn is not None and leg.final_status is None:
                leg.txn.cancel()
                leg.final_status = 487

    def classify(self) -> tuple[Outcome, int]:
        statuses = self.failures
        if any(s in (486, 600) for s in statuses):
            return Outcome.BUSY, 486
        if any(s in (603, 403) for s in statuses):
            return Outcome.REJECT, 603
        if all(s in (408, 503) for s in statuses) and not self.rang:
            return Outcome.UNREACHABLE, 480
        if self.rang and all(s in (408, 480) for s in statuses):
            return Outcome.NO_ANSWER, 480
        # Never pass a callee's authentication demand to the caller.
        usable = [s for s in statuses if s not in (401, 407, 408, 503)]
        return Outcome.FAILURE, min(usable) if usable else 480


class Call:
    """One call from an extension to a destination: an extension, a group, forwarded on."""

    def __init__(
        self,
        manager: CallManager,
        txn: ServerTransaction,
        source: Address,
        caller: CallParty,
        callee: CallParty,
        caller_extension: Extension | None = None,
        trunk: TrunkSettings | None = None,
    ) -> None:
        self.manager = manager
        self.core = manager.core
        self.caller = caller
        self.callee = callee
        self.caller_extension = caller_extension
        self.trunk_in = trunk  # the trunk the call came from
        self.inbound = InboundLeg(self, txn, source)
        self.media = MediaPath(txn.request.call_id, manager.relay, self.core.spawn)
        self.forks: list[OutboundLeg] = []
        self.attempt: Attempt | None = None
        self.answered: OutboundLeg | None = None
        self.state = "ringing"
        self.started = self.core.clock.wall()
        self.answer_time: float | None = None
        self.final_status = 0
        self.max_forwards = 69
        self.duration_timer: TimerHandle | None = None
        self.application: ApplicationCall | None = None
        self.server_sdp: bytes | None = None  # our answer when the server took the call
        self.ring_timeout_override: float | None = None
        # CSeq of the last INVITE relayed to the callee/caller, for relaying its ACK.
        self.pending_ack_cseq: dict[int, int] = {}
        txn.on_cancel = self.on_caller_cancel
        txn.on_no_ack = self.on_no_ack

    @property
    def call_id(self) -> str:
        return self.inbound.txn.request.call_id

    # --- routing ---
    def start(self, destination: Destination, max_forwards: int) -> None:
        log.info("call start %s: %s -> %s", self.call_id, self.caller.number, self.callee.number)
        self.max_forwards = max_forwards
        self.core.respond(self.inbound.txn, 100)
        self.route(destination, (), 404)

    def route(self, destination: Destination, chain: tuple[str, ...], fallback: int) -> None:
        """Go on to ``destination``; ``chain`` holds the extensions already tried (forwarding
        loops stop there, ending with ``fallback``)."""
        if self.state not in ("ringing", "application"):
            return
        match destination:
            case ToExtension(extension):
                self.ring_extension(extension, chain, fallback)
            case ToGroup(group):
                self.ring_group(group, chain)
            case Reject(status, reason):
                self.finish_unanswered(status, reason=reason)
            case ToTrunk():
                self.ring_trunk(destination)
            case ToApplication(name, argument):
                self.manager.start_application(self, name, argument)

    def ring_extension(self, extension: Extension, chain: tuple[str, ...], fallback: int) -> None:
        number = extension.number
        if number in chain:
            log.info("call %s: forwarding loop back to %s stops", self.call_id, number)
            self.finish_unanswered(fallback)
            return
        chain = (*chain, number)
        if extension.forward_always:
            self.forward(extension.forward_always, chain, fallback)
            return
        if self.manager.limits.check_callee(extension) is not None:
            self.after_extension(extension, chain, Outcome.BUSY, 486)
            return
        bindings = self.manager.reachable(number)
        if not bindings:
            self.after_extension(extension, chain, Outcome.UNREACHABLE, 480)
            return
        timeout = self.ring_timeout_override or self.core.settings.calls.ring_timeout
        if extension.forward_no_answer and extension.no_answer_timeout:
            timeout = extension.no_answer_timeout
        self.ring(
            [(number, b) for b in bindings],
            timeout,
            lambda outcome, status: self.after_extension(extension, chain, outcome, status),
        )

    def after_extension(
        self, extension: Extension, chain: tuple[str, ...], outcome: Outcome, status: int
    ) -> None:
        if outcome is Outcome.ANSWERED:
            return
        target = {
            Outcome.BUSY: extension.forward_busy,
            Outcome.NO_ANSWER: extension.forward_no_answer,
            Outcome.UNREACHABLE: extension.forward_unreachable,
        }.get(outcome)
        if target:
            self.forward(target, chain, OUTCOME_STATUS.get(outcome, status))
        elif (
            extension.voicemail
            and outcome in (Outcome.BUSY, Outcome.NO_ANSWER, Outcome.UNREACHABLE)
            and self.application is None
            and "voicemail" in self.manager.applications
        ):
            # Unanswered: the caller leaves a message in the extension's mailbox.
            self.route(ToApplication("voicemail", extension.number), chain, status)
        else:
            self.finish_unanswered(OUTCOME_STATUS.get(outcome, status), outcome=outcome)

    def forward(self, number: str, chain: tuple[str, ...], fallback: int) -> None:
        """Tell the caller (181) and route ``number`` as if dialled (lists apply no more)."""
        txn = self.inbound.txn
        if txn.last_response is None or txn.last_response.status < 200:
            self.inbound.ensure_dialog()
            self.core.respond(txn, 181, to_tag=self.inbound.tag)
        log.info("call %s forwarded to %s", self.call_id, number)
        self.route(self.manager.router.resolve(number).destination, chain, fallback)

    def ring_group(self, group: GroupSettings, chain: tuple[str, ...]) -> None:
        members = [
            m
            for m in (self.manager.directory.lookup(n) for n in group.members)
            if m is not None and m.enabled and m.number not in chain
        ]

        def overflow(outcome: Outcome, status: int) -> None:
            if outcome is Outcome.ANSWERED:
                return
            if group.overflow:
                self.forward(group.overflow, (*chain, group.number), status)
            else:
                self.finish_unanswered(OUTCOME_STATUS.get(outcome, status), outcome=outcome)

        if group.strategy == "ring":
            targets = [
                (m.number, b)
                for m in members
                if self.manager.limits.check_callee(m) is None
                for b in self.manager.reachable(m.number)
            ]
            if not targets:
                busy = any(self.manager.limits.check_callee(m) is not None for m in members)
                overflow(Outcome.BUSY if busy else Outcome.UNREACHABLE, 480)
                return
            self.ring(targets, group.ring_timeout, overflow)
            return
        start = 0
        if group.strategy == "circular" and members:
            start = self.manager.next_hunt_position(group.number) % len(members)
        order = members[start:] + members[:start]
        self._hunt(group, order, 0, [], overflow)

    def _hunt(
        self,
        group: GroupSettings,
        order: list[Extension],
        index: int,
        outcomes: list[Outcome],
        overflow: Callable[[Outcome, int], None],
    ) -> None:
        while index < len(order):
            member = order[index]
            bindings = self.manager.reachable(member.number)
            if self.manager.limits.check_callee(member) is not None:
                outcomes.append(Outcome.BUSY)
            elif not bindings:
                outcomes.append(Outcome.UNREACHABLE)
            else:

                def next_member(outcome: Outcome, status: int, position: int = index) -> None:
                    if outcome is Outcome.ANSWERED:
                        if group.strategy == "circular":
                            answered = group.members.index(order[position].number)
                            self.manager.hunt_answered(group.number, answered)
                        return
                    outcomes.append(outcome)
                    self._hunt(group, order, position + 1, outcomes, overflow)

                self.ring([(member.number, b) for b in bindings], group.ring_timeout, next_member)
                return
            index += 1
        final = (
            Outcome.BUSY
            if outcomes and all(o is Outcome.BUSY for o in outcomes)
            else (Outcome.NO_ANSWER if Outcome.NO_ANSWER in outcomes else Outcome.UNREACHABLE)
        )
        overflow(final, OUTCOME_STATUS[final])

    def ring(
        self,
        targets: list[tuple[str, Binding]],
        timeout: float,
        done: Callable[[Outcome, int], None],
    ) -> None:
        """Ring every (extension number, binding) at once; ``done`` hears how it ended."""
        attempt = Attempt(self, sorted({number for number, _ in targets}), done)
        for number, binding in targets:
            destination = Address(binding.transport, binding.source_host, binding.source_port)
            try:
                request = self._fork_request(number, binding, destination)
            except SipError as exc:
                log.warning("cannot call contact %s: %s", binding.contact_uri, exc.reason)
                continue
            attempt.forks.append(OutboundLeg(self, binding, destination, request, attempt, number))
        self._start_attempt(attempt, timeout)

    def _start_attempt(self, attempt: Attempt, timeout: float) -> None:
        """Count the attempt's members as rung, send its INVITEs and start its ring timer.

        A member is counted only while it is under its limit, in one step: another server
        process sharing the counts may have taken its last place since it was checked, and it
        is then not rung (busy)."""
        limits, directory = self.manager.limits, self.manager.directory
        busy: set[str] = set()
        for number in attempt.members:
            extension = directory.lookup(number)
            limit = extension.max_calls if extension is not None else None
            if limits.join_or_refuse(self, number, limit, "Busy Here") is not None:
                busy.add(number)
        if busy:
            attempt.forks = [leg for leg in attempt.forks if leg.number not in busy]
        self.attempt = attempt
        self.forks.extend(attempt.forks)
        if not attempt.forks:
            attempt.finish(*((Outcome.BUSY, 486) if busy else (Outcome.UNREACHABLE, 480)))
            return
        attempt.timer = self.core.clock.call_later(timeout, self.on_ring_timeout, attempt)
        if self._relay_for(attempt.forks) and attempt.forks[0].request.body:
            self._offer_through_relay(attempt)
            return
        for leg in attempt.forks:
            leg.txn = self.core.transactions.send_request(leg.request, leg.destination, leg)

    # --- media relay ---
    def _relay_for(self, forks: list[OutboundLeg], joining: bool = False) -> bool:
        """Whether this call's media goes through the relay, deciding it (for good) when one
        of ``forks`` needs it. While an application (IVR) holds the call it has the media;
        the question comes when it ``joining`` the caller with a callee."""
        media = self.media
        if media.relayed:
            return True
        if media.relay is None or (self.application is not None and not joining):
            return False
        request = self.inbound.txn.request
        named = sdp_host(request.body) if is_sdp(request.content_type, request.body) else None
        if named is None:
            try:
                contacts = request.contacts or []
            except SipError:
                contacts = []
            uri = contacts[0].uri if contacts else None
            named = uri.host.strip("[]") if isinstance(uri, SipUri) else None
        caller_forced = any(
            side is not None and side.forward_media
            for side in (self.caller_extension, self.trunk_in)
        )
        label = f"caller {self.caller.number}"
        caller = Side(self.inbound.source.host, named, caller_forced, label)
        directory = self.manager.directory
        always = self.core.settings.relay.always
        for leg in forks:
            callee_named: str | None = leg.destination.host
            forced = leg.trunk is not None and leg.trunk.forward_media
            if leg.binding is not None:
                contact = parse_uri(leg.binding.contact_uri)
                callee_named = contact.host.strip("[]") if isinstance(contact, SipUri) else None
                extension = directory.lookup(leg.number)
                forced = extension is not None and extension.forward_media
            callee = Side(leg.destination.host, callee_named, forced, f"callee {leg.number}")
            reason = relay_reason(caller, callee, self.core.addresses, always)
            if reason is not None and media.engage(reason):
                self.manager.relayed[self.call_id] = self
                return True
        return False

    def _leg_name(self, leg: InboundLeg | OutboundLeg) -> Leg:
        return "a" if leg is self.inbound else "b"

    def _peer_of(self, leg: InboundLeg | OutboundLeg) -> Address:
        if leg.dialog is not None:
            return leg.dialog.peer
        return leg.source if isinstance(leg, InboundLeg) else leg.destination

    def _rewrite(
        self, kind: Kind, sender: InboundLeg | OutboundLeg, receiver: InboundLeg | OutboundLeg
    ) -> tuple[Kind, Leg, str, str, str]:
        """The relay step for an SDP going from ``sender`` to ``receiver``."""
        from_peer = self._peer_of(sender)
        to_peer = self._peer_of(receiver)
        advertise = self.core.media_addresses(to_peer)[1]
        sender_advertise = self.core.media_addresses(from_peer)[1]
        return kind, self._leg_name(sender), from_peer.host, advertise, sender_advertise

    def pass_sdp(
        self,
        kind: Kind,
        sender: InboundLeg | OutboundLeg,
        receiver: InboundLeg | OutboundLeg,
        message: Request | Response,
        then: Callable[[bytes | None], None],
        failed: Callable[[RelayError], None] | None = None,
    ) -> None:
        """Pass ``message``'s body (an SDP ``kind`` from ``sender``) on to ``then`` for
        ``receiver``: rewritten by the relay when the call is relayed, else as it is."""
        step = self._rewrite(kind, sender, receiver) if self.media.relayed else None
        self.media.pass_on(
            message.content_type, message.body, step, then, failed or self._media_failed
        )

    def relay_join(self, leg: OutboundLeg) -> bool:
        """An application joins the caller with ``leg``: decide whether their media is relayed."""
        return self._relay_for([leg], joining=True)

    def _offer_through_relay(self, attempt: Attempt) -> None:
        """Send the attempt's INVITEs once the relay has rewritten the caller's offer (each
        fork gets the relay address its realm reaches)."""
        request = self.inbound.txn.request
        first = attempt.forks[0]
        step = self._rewrite("offer", self.inbound, first)
        first_advertise = step[3]

        def send(body: bytes | None) -> None:
            if attempt.over or attempt is not self.attempt or self.state == "ended":
                return
            for leg in attempt.forks:
                if leg.final_status is not None or leg.txn is not None:
                    continue
                advertise = self.core.media_addresses(leg.destination)[1]
                if body is not None and advertise != first_advertise:
                    leg.request.body = readdress(body, advertise)
                else:
                    leg.request.body = body or b""
                leg.txn = self.core.transactions.send_request(leg.request, leg.destination, leg)

        self.media.pass_on(request.content_type, request.body, step, send, self._media_failed)

    def _media_failed(self, exc: RelayError) -> None:
        """The relay could not take an SDP of this call: the call cannot have media."""
        log.warning("call %s: media relay: %s", self.call_id, exc.reason)
        if self.state == "ended":
            return
        txn = self.inbound.txn
        if txn.last_response is not None and txn.last_response.status >= 200:
            self.hangup(None, "system")
            return
        if self.state == "answered":
            # The callee answered but the caller never heard it: refuse the caller, BYE the callee.
            self.answer_time = None
            self.final_status = exc.status
            self.inbound.ensure_dialog()
            self.core.respond(txn, exc.status, exc.reason, to_tag=self.inbound.tag)
            self.hangup(self.inbound, "system")
            return
        self.finish_unanswered(exc.status, hangup_side="system", reason=exc.reason)

    def on_media_inactive(self) -> None:
        if self.state in ("answered", "ringing"):
            log.info("call %s: no media for %.0f s, hanging up", self.call_id,
                     self.core.settings.relay.timeout)  # fmt: skip
            if self.state == "answered":
                self.hangup(None, "system")
            else:
                self.finish_unanswered(408, hangup_side="system", reason="No media")

    def _fork_request(self, number: str, binding: Binding, destination: Address) -> Request:
        target = parse_uri(binding.contact_uri)
        if not isinstance(target, SipUri):
            raise SipError("contact is not a SIP URI")
        host, _ = self.core.local_address(destination)
        domain = self.core.settings.sip.domain or format_host(host)
        return self._invite(
            target,
            destination,
            self.caller.number,
            self.caller.display,
            domain,
            f"<sip:{number}@{domain}>",
        )

    def _invite(
        self,
        target: SipUri,
        destination: Address,
        from_user: str,
        display_name: str,
        domain: str,
        to: str,
    ) -> Request:
        """A new INVITE toward ``destination`` carrying the caller's offer (none while an
        application holds the call)."""
        core = self.core
        original = self.inbound.txn.request
        host, port = core.local_address(destination)
        headers = Headers()
        headers.add("Via", new_via(destination.transport, host, port))
        headers.add("Max-Forwards", str(self.max_forwards))
        display = f"{quote(display_name)} " if display_name else ""
        headers.add("From", f"{display}<sip:{from_user}@{domain}>;tag={new_tag()}")
        headers.add("To", to)
        headers.add("Call-ID", new_call_id(host))
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", f"<{core.contact_uri(from_user, destination)}>")
        headers.add("Allow", ALLOW_HEADER)
        headers.add("User-Agent", core.settings.sip.user_agent)
        if self.application is not None and self.application.answered:
            # Invited without an offer: the callee's offer goes to the caller (RFC 3725 flow I).
            # (Before the application answered, the caller's own offer is passed on as usual.)
            return Request("INVITE", target, headers)
        for name in _BODY_HEADERS:
            value = original.headers.get(name)
            if value is not None and original.body:
                headers.add(name, value)
        return Request("INVITE", target, headers, original.body)

    # --- trunks ---
    def ring_trunk(self, target: ToTrunk) -> None:
        """Call out through ``target``'s trunk, or the first of its fallbacks that can take the
        call; 503 at once when none can (unknown, down, or at its outgoing limit)."""
        candidates = [target, *target.fallbacks]
        source = self.trunk_in
        if source is not None:
            # Toll-fraud protection: a call from a trunk leaves only where its transit allows.
            candidates = [t for t in candidates if source.may_reach(t.trunk)]
            if not candidates:
                log.warning(
                    "call %s from trunk %s may not leave through trunk %s (no transit)",
                    self.call_id,
                    source.name,
                    target.trunk,
                )
                self.finish_unanswered(403, reason="No transit through this server")
                return
        self._next_trunk(candidates, 503, "No trunk is configured")

    def _next_trunk(self, candidates: list[ToTrunk], status: int, reason: str | None) -> None:
        trunks = self.manager.trunks
        limits = self.manager.limits
        while candidates:
            target = candidates.pop(0)
            name = target.trunk
            trunk = trunks.lookup(name) if trunks is not None else None
            destination = trunks.destination(name) if trunks is not None else None
            profile = trunk_profile(name, "out")
            if trunk is None:
                status, reason = 503, f"Trunk {name} is not configured"
            elif destination is None:
                status, reason = 503, f"Trunk {name} is unavailable"
            elif (
                refusal := limits.join_or_refuse(
                    self, profile, trunk.max_outgoing, f"Trunk {name}: max outgoing calls reached"
                )
            ) is not None:
                # Checked and counted in one step: other server processes share the limit.
                status, reason = refusal.status, refusal.reason
            else:
                try:
                    request = self._trunk_request(trunk, target.number, destination)
                except (SipError, LookupError) as exc:
                    limits.leave(self, profile)
                    status, reason = 503, f"Trunk {name} cannot be reached"
                    log.warning("call %s: trunk %s: %s", self.call_id, name, exc)
                    continue
                log.info("call %s: out through trunk %s to %s", self.call_id, name, target.number)
                self._call_trunk(trunk, destination, request, candidates)
                return
            log.info("call %s: %s", self.call_id, reason)
        self.finish_unanswered(status, reason=reason)

    def _call_trunk(
        self,
        trunk: TrunkSettings,
        destination: Address,
        request: Request,
        candidates: list[ToTrunk],
    ) -> None:
        profile = trunk_profile(trunk.name, "out")
        attempt = Attempt(
            self, [profile], lambda outcome, _: self._after_trunk(attempt, candidates, outcome)
        )
        leg = OutboundLeg(self, None, destination, request, attempt, profile, trunk)
        attempt.forks.append(leg)
        timeout = self.ring_timeout_override or self.core.settings.calls.ring_timeout
        self._start_attempt(attempt, timeout)
        self.core.clock.call_later(TRUNK_RESPONSE_TIMEOUT, self._trunk_silent, leg, leg.txn)

    def _trunk_silent(self, leg: OutboundLeg, txn: ClientTransaction | None) -> None:
        # (``txn`` is None when the INVITE waited for the media relay: the first one counts.)
        if txn is not None and leg.txn is not txn:
            return
        if leg.responded or leg.final_status is not None:
            return
        log.info("call %s: trunk %s does not answer", self.call_id, leg.trunk and leg.trunk.name)
        if leg.txn is not None:
            leg.txn.terminate()
        self.on_outbound_failure(leg, 408)

    def _after_trunk(self, attempt: Attempt, candidates: list[ToTrunk], outcome: Outcome) -> None:
        if outcome is Outcome.ANSWERED:
            return
        status = attempt.failures[-1] if attempt.failures else OUTCOME_STATUS.get(outcome, 480)
        if outcome is Outcome.NO_ANSWER and not attempt.failures:
            status = 408  # our ring timeout
        # A trunk that fails as a server (5xx, or no answer at all) is followed by the next one;
        # an answer about the callee (busy, unknown number, declined) is final.
        failed = 500 <= status < 600 or (status == 408 and not attempt.rang)
        leg = attempt.forks[0] if attempt.forks else None
        name = leg.trunk.name if leg is not None and leg.trunk is not None else "?"
        reason = leg.reason if leg is not None and attempt.failures else None
        if failed and candidates:
            log.info("call %s: trunk %s failed (%d), trying the next", self.call_id, name, status)
            self._next_trunk(candidates, 503, f"Trunk {name} failed")
        elif status in (401, 407):
            self.finish_unanswered(503, reason=f"Trunk {name} refused the credentials")
        elif failed:
            self.finish_unanswered(503, reason=reason if status == 503 else f"Trunk {name} failed")
        else:
            self.finish_unanswered(status, reason=reason)

    def _trunk_request(self, trunk: TrunkSettings, number: str, destination: Address) -> Request:
        """The INVITE toward a trunk: ``sip:NUMBER@host:port`` (with the transport and the
        trunk's extra parameters), From and P-Asserted-Identity per the caller-number policy."""
        user = number.replace("#", "%23")
        params = "" if destination.transport == "udp" else f";transport={destination.transport}"
        if trunk.uri_params:
            params += ";" + trunk.uri_params
        target = parse_uri(f"sip:{user}@{format_host(trunk.host)}:{trunk.port}{params}")
        if not isinstance(target, SipUri):
            raise SipError("not a SIP URI")
        keep = trunk.caller_id == "keep"
        identity = (self.caller.number if keep else trunk.caller_number).replace("#", "%23")
        domain = format_host(trunk.sip_domain)
        display = self.caller.display if keep else ""
        request = self._invite(
            target, destination, identity, display, domain, f"<sip:{user}@{domain}>"
        )
        if trunk.asserted_identity:
            request.headers.add("P-Asserted-Identity", f"<sip:{identity}@{domain}>")
        return request

    def answer_trunk_challenge(self, leg: OutboundLeg, response: Response) -> bool:
        """Send the INVITE again with the trunk's credentials (same Call-ID and From tag, the
        next CSeq); once per leg, so a refused password ends the attempt."""
        trunk = leg.trunk
        ringing = self.state in ("ringing", "application")
        if trunk is None or leg.authenticated or not ringing or leg.attempt is not self.attempt:
            return False
        if not trunk.login or not trunk.password or leg.attempt.over:
            return False
        proxy = response.status == 407
        challenge = choose_challenge(
            response.headers.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        )
        if challenge is None or (trunk.realm and challenge.realm != trunk.realm):
            return False
        sent = leg.request
        try:
            credentials = build_authorization(
                challenge, "INVITE", str(sent.uri), trunk.login, trunk.password, body=sent.body
            )
            host, port = self.core.local_address(leg.destination)
        except (ValueError, LookupError):
            return False
        retry = Request("INVITE", sent.uri, sent.headers.copy(), sent.body)
        retry.headers.set("Via", new_via(leg.destination.transport, host, port))
        retry.headers.set("CSeq", f"{sent.cseq.number + 1} INVITE")
        retry.headers.set("Proxy-Authorization" if proxy else "Authorization", credentials)
        leg.authenticated = True
        leg.request = retry
        leg.responded = False
        leg.txn = self.core.transactions.send_request(retry, leg.destination, leg)
        self.core.clock.call_later(TRUNK_RESPONSE_TIMEOUT, self._trunk_silent, leg, leg.txn)
        return True

    # --- calls held by an application (IVR) ---
    def server_answered(self, sdp: bytes) -> None:
        """The server answers the caller itself (an application runs the call)."""
        inbound = self.inbound
        inbound.ensure_dialog()
        self.server_sdp = sdp
        reply = self.core.build_response(
            inbound.txn.request,
            200,
            to_tag=inbound.tag,
            body=sdp,
            headers={"Content-Type": "application/sdp"},
        )
        reply.headers.add(
            "Contact", f"<{self.core.contact_uri(self.callee.number, inbound.source)}>"
        )
        reply.headers.add("Allow", ALLOW_HEADER)
        inbound.txn.respond(reply)
        self.state = "application"
        self.answer_time = self.core.clock.wall()
        self.final_status = 200

    def place_callto(self, number: str, ring_timeout: float | None) -> None:
        """Ring ``number`` for the application; it hears the outcome via ``callto_finished``."""
        self.ring_timeout_override = ring_timeout
        route = self.manager.router.resolve(number)
        destination = route.destination
        if isinstance(destination, ToApplication):
            destination = Reject(404, "Not Found")
        # On the next turn of the loop: an outcome known at once (unknown number, no transit)
        # must not reach the application before its ringback tone has started, or the tone
        # is stopped before it plays and then never ends.
        self.core.clock.call_later(0.0, self.route, destination, (), 404)

    def joined_by_application(self, leg: OutboundLeg) -> None:
        self.state = "answered"
        self._limit_duration(leg.number)
        log.info("call %s joined to %s", self.call_id, leg.number)

    def end_application(self, side: str) -> None:
        """The caller left while an application held the call."""
        if self.state == "ended":
            return
        self._stop_attempt()
        txn = self.inbound.txn
        if txn.last_response is None or txn.last_response.status < 200:
            self.inbound.ensure_dialog()
            self.core.respond(txn, 487, to_tag=self.inbound.tag)
            self.final_status = 487
        self.state = "ended"
        self._end(side)

    # --- responses from the callee's contacts ---
    def on_outbound_response(self, leg: OutboundLeg, response: Response) -> None:
        status = response.status
        current = leg.attempt is self.attempt and not leg.attempt.over
        if status < 200:
            if status == 100 or self.state not in ("ringing", "application") or not current:
                return
            leg.attempt.rang = True
            if response.to.tag and leg.dialog is None:
                leg.dialog = Dialog.as_uac(leg.request, response, leg.destination)
            if self.application is None or not self.application.answered:
                self._relay_provisional(leg, response)
            return
        if status < 300:
            self._on_outbound_answer(leg, response)
            return
        if status in (401, 407) and self.answer_trunk_challenge(leg, response):
            return
        leg.reason = response.reason[:100] or None
        self.on_outbound_failure(leg, status)

    def _relay_provisional(self, leg: OutboundLeg, response: Response) -> None:
        def send(body: bytes | None) -> None:
            inbound = self.inbound
            last = inbound.txn.last_response
            if self.state == "ended" or (last is not None and last.status >= 200):
                return
            inbound.txn.respond(self._reply_to_caller(response, body))

        self._callee_sdp_to_caller(leg, response, send)

    def _callee_sdp_to_caller(
        self, leg: OutboundLeg, response: Response, then: Callable[[bytes | None], None]
    ) -> None:
        """Pass a callee response's body on toward the caller (through the relay when the call
        is relayed: an answer to the caller's offer, or the callee's offer when the caller's
        INVITE had none)."""
        kind: Kind = "answer" if leg.request.body else "offer"
        self.pass_sdp(kind, leg, self.inbound, response, then)

    def _reply_to_caller(self, response: Response, body: bytes | None = None) -> Response:
        """The callee's provisional or final response, as the caller's dialog sends it, with
        ``body`` (the relay's rewrite) instead of the response's own when given."""
        inbound = self.inbound
        inbound.ensure_dialog()
        reply = self.core.build_response(
            inbound.txn.request,
            response.status,
            response.reason,
            to_tag=inbound.tag,
            body=response.body if body is None else body,
        )
        self._copy_body_headers(response, reply)
        reply.headers.add(
            "Contact", f"<{self.core.contact_uri(self.callee.number, inbound.source)}>"
        )
        return reply

    def _take_answer(
        self, leg: OutboundLeg, dialog: Dialog, response: Response, attempt: Attempt
    ) -> None:
        """``leg`` answered: it becomes the callee's side, the other contacts are let go."""
        leg.final_status = response.status
        leg.dialog = dialog
        self.manager.register_dialog(dialog, leg)
        self.answered = leg
        self.final_status = response.status
        for number in attempt.members:
            if number != leg.number:
                self.manager.limits.leave(self, number)
        attempt.cancel_forks(keep=leg)
        attempt.finish(Outcome.ANSWERED, response.status)

    def _on_outbound_answer(self, leg: OutboundLeg, response: Response) -> None:
        if self.answered is leg:
            if leg.ack is not None:  # a retransmitted 2xx: our ACK was lost
                self.core.transactions.send_stateless(
                    leg.ack, leg.dialog.peer if leg.dialog else leg.destination
                )
            return
        dialog = Dialog.as_uac(leg.request, response, leg.destination)
        attempt = leg.attempt
        ringing = self.state in ("ringing", "application")
        if self.answered is not None or not ringing or attempt is not self.attempt:
            # Another contact answered first (or the caller gave up): acknowledge and hang up.
            self._ack_and_bye(leg, dialog)
            return
        if self.application is not None and self.application.answered:
            self._take_answer(leg, dialog, response, attempt)
            self.application.join(leg, response)
            return
        self.state = "answered"
        self.answer_time = self.core.clock.wall()
        self._take_answer(leg, dialog, response, attempt)
        inbound = self.inbound

        def send(body: bytes | None) -> None:
            if self.state != "answered" or self.answered is not leg:
                return
            reply = self._reply_to_caller(response, body)
            reply.headers.add("Allow", ALLOW_HEADER)
            inbound.txn.respond(reply)
            self.pending_ack_cseq[id(inbound)] = inbound.txn.request.cseq.number

        self._callee_sdp_to_caller(leg, response, send)
        self._limit_duration(leg.number)
        if self.application is not None:
            # An application's callto before it answered: the caller now talks to the callee.
            self.application.callto_finished(Outcome.ANSWERED)
        log.debug("call answered %s by %s", self.call_id, leg.request.uri)

    def _limit_duration(self, answered_by: str) -> None:
        limits = [
            e.max_call_duration
            for e in (self.caller_extension, self.manager.directory.lookup(answered_by))
            if e is not None and e.max_call_duration
        ]
        if limits:
            self.duration_timer = self.core.clock.call_later(
                float(min(limits)), self.on_duration_reached
            )

    def on_duration_reached(self) -> None:
        self.duration_timer = None
        if self.state == "answered":
            log.info("call %s reached its maximum duration", self.call_id)
            self.hangup(None, "system")

    def _ack_and_bye(self, leg: OutboundLeg, dialog: Dialog) -> None:
        host, port = self.core.local_address(dialog.peer)
        ack = dialog.create_request("ACK", host, port, cseq=leg.request.cseq.number)
        self.core.transactions.send_stateless(ack, dialog.peer)
        bye = dialog.create_request("BYE", host, port)
        self.core.transactions.send_request(bye, dialog.peer, _IGNORE)

    def on_outbound_failure(self, leg: OutboundLeg, status: int) -> None:
        if leg.final_status is not None:
            return
        leg.final_status = status
        attempt = leg.attempt
        attempt.failures.append(status)
        if attempt.over or attempt is not self.attempt:
            return
        if self.state not in ("ringing", "application"):
            return
        if all(f.final_status is not None for f in attempt.forks):
            attempt.finish(*attempt.classify())

    # --- caller-side events ---
    def on_caller_cancel(self) -> None:
        if self.state != "ringing":
            return
        self._stop_attempt()
        if self.application is not None:
            self.application.hang_up_locally("caller")
            return
        self.finish_unanswered(487, hangup_side="caller")

    def on_ring_timeout(self, attempt: Attempt) -> None:
        attempt.timer = None
        if self.state not in ("ringing", "application"):
            return
        if attempt is not self.attempt or attempt.over:
            return
        attempt.cancel_forks()
        attempt.finish(Outcome.NO_ANSWER, 408)

    def on_no_ack(self) -> None:
        if self.state == "answered":
            log.warning("call %s: no ACK from the caller, hanging up", self.call_id)
            self.hangup(None, "system")

    def _stop_attempt(self) -> None:
        attempt = self.attempt
        if attempt is not None and not attempt.over:
            attempt.cancel_forks()
            attempt.over = True
            if attempt.timer is not None:
                attempt.timer.cancel()
                attempt.timer = None

    def finish_unanswered(
        self,
        status: int,
        hangup_side: str = "callee",
        reason: str | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        if self.state == "ended":
            return
        self._stop_attempt()
        if self.application is not None and hangup_side == "callee":
            # A callto from an application ended: the application decides what follows.
            self.state = "application" if self.application.answered else "ringing"
            found = outcome or _outcome_of(status)
            if self.application.callto_finished(found):
                return
        self.state = "ended"
        self.final_status = status
        txn = self.inbound.txn
        if txn.last_response is None or txn.last_response.status < 200:
            self.inbound.ensure_dialog()
            self.core.respond(txn, status, reason, to_tag=self.inbound.tag)
        self._end(hangup_side)

    # --- established call ---
    def in_dialog(
        self,
        leg: InboundLeg | OutboundLeg,
        request: Request,
        txn: ServerTransaction | None,
        source: Address,
    ) -> None:
        mine = leg.dialog
        if mine is None:
            return
        if self.state == "application" and self.application is not None:
            if leg is self.inbound:
                if request.method == "ACK" or txn is None:
                    return
                if not mine.accept_remote_cseq(request.cseq.number):
                    self.core.respond(txn, 500, "CSeq out of order", to_tag=mine.local_tag)
                    return
                self.application.caller_request(request, txn)
            elif txn is not None:
                self.core.respond(txn, 491, to_tag=mine.local_tag)
            return
        other = self._other(leg)
        if request.method == "ACK":
            self._relay_ack(leg, request)
            return
        if txn is None:
            return
        if not mine.accept_remote_cseq(request.cseq.number):
            self.core.respond(txn, 500, "CSeq out of order", to_tag=mine.local_tag)
            return
        if request.method == "BYE":
            self.core.respond(txn, 200, to_tag=mine.local_tag)
            side = "caller" if leg is self.inbound else "callee"
            self.hangup(leg, side)
            return
        if request.method == "CANCEL":
            return
        if other is None or other.dialog is None or self.state != "answered":
            self.core.respond(txn, 481 if self.state == "ended" else 491, to_tag=mine.local_tag)
            return
        if request.method in ("INVITE", "UPDATE"):
            mine.update_target(request)
        txn.on_cancel = None
        def send(body: bytes | None) -> None:
            if other.dialog is None or self.state != "answered":
                self.core.respond(txn, 481, to_tag=mine.local_tag)
                return
            self._send_in_dialog(request, txn, other, other.dialog, body)

        def refuse(exc: RelayError) -> None:
            log.warning("call %s: media relay refused a %s: %s", self.call_id, request.method,
                        exc.reason)  # fmt: skip
            if not txn.terminated and txn.last_response is None:
                self.core.respond(txn, exc.status, exc.reason, to_tag=mine.local_tag)

        if request.method in ("INVITE", "UPDATE"):
            self.pass_sdp("offer", leg, other, request, send, refuse)
        else:  # INFO, MESSAGE, ...: their bodies are not session descriptions
            self.media.pass_on(request.content_type, request.body, None, send, refuse)

    def _send_in_dialog(
        self,
        request: Request,
        txn: ServerTransaction,
        other: InboundLeg | OutboundLeg,
        peer: Dialog,
        body: bytes | None,
    ) -> None:
        """Send ``request`` on to the other leg's dialog ``peer`` (with ``body``)."""
        host, port = self.core.local_address(peer.peer)
        relayed = peer.create_request(request.method, host, port, body=body or b"")
        self._copy_body_headers(request, relayed)
        for name in _RELAYED_REQUEST_HEADERS:
            value = request.headers.get(name)
            if value is not None:
                relayed.headers.add(name, value)
        mf = request.max_forwards
        relayed.headers.set("Max-Forwards", str(max(0, (70 if mf is None else mf) - 1)))
        if request.method in ("INVITE", "UPDATE"):
            own = self.callee.number if other is not self.inbound else self.caller.number
            relayed.headers.add("Contact", f"<{self.core.contact_uri(own, peer.peer)}>")
        self.core.transactions.send_request(relayed, peer.peer, _RelayListener(self, txn, relayed))

    def relay_response(self, origin: ServerTransaction, sent: Request, response: Response) -> None:
        if origin.terminated or response.status == 100:
            return
        if origin.last_response is not None and origin.last_response.status >= 200:
            return
        leg = self.manager.leg_for(origin.request)
        other = self._other(leg) if leg is not None else None

        def send(body: bytes | None) -> None:
            self._answer_in_dialog(origin, sent, response, leg, body)

        def refuse(exc: RelayError) -> None:
            log.warning("call %s: media relay refused a response: %s", self.call_id, exc.reason)
            if not origin.terminated and origin.last_response is None:
                self.core.respond(origin, exc.status, exc.reason)

        if sent.method in ("INVITE", "UPDATE") and leg is not None and other is not None:
            self.pass_sdp("answer" if sent.body else "offer", other, leg, response, send, refuse)
        else:
            self.media.pass_on(response.content_type, response.body, None, send, refuse)

    def _answer_in_dialog(
        self,
        origin: ServerTransaction,
        sent: Request,
        response: Response,
        leg: InboundLeg | OutboundLeg | None,
        body: bytes | None,
    ) -> None:
        """Answer ``origin`` with the other leg's ``response`` (``body`` in place of its own)."""
        if origin.terminated or (
            origin.last_response is not None and origin.last_response.status >= 200
        ):
            return
        status = response.status
        if status in (401, 407):
            status = 500
        dialog = leg.dialog if leg is not None else None
        reply = self.core.build_response(
            origin.request,
            status,
            response.reason if status == response.status else None,
            to_tag=dialog.local_tag if dialog else None,
            body=response.body if body is None else body,
        )
        self._copy_body_headers(response, reply)
        if sent.method in ("INVITE", "UPDATE") and 200 <= status < 300 and leg is not None:
            other = self._other(leg)
            if other is not None and other.dialog is not None:
                other.dialog.update_target(response)
            number = self.callee.number if leg is self.inbound else self.caller.number
            reply.headers.add("Contact", f"<{self.core.contact_uri(number, origin.source)}>")
            if sent.method == "INVITE" and leg is not None:
                self.pending_ack_cseq[id(leg)] = sent.cseq.number
        origin.respond(reply)

    def _relay_ack(self, leg: InboundLeg | OutboundLeg, ack: Request) -> None:
        other = self._other(leg)
        cseq = self.pending_ack_cseq.pop(id(leg), None)
        if other is None or other.dialog is None or cseq is None:
            return
        if other is self.answered and isinstance(other, OutboundLeg) and other.ack is None:
            cseq = other.request.cseq.number  # the ACK for the initial INVITE
        peer = other.dialog
        # An ACK with a body answers an offer made in the 2xx (a late offer).

        def send(body: bytes | None) -> None:
            host, port = self.core.local_address(peer.peer)
            relayed = peer.create_request("ACK", host, port, cseq=cseq, body=body or b"")
            self._copy_body_headers(ack, relayed)
            if isinstance(other, OutboundLeg) and other.ack is None:
                other.ack = relayed
            self.core.transactions.send_stateless(relayed, peer.peer)

        self.pass_sdp("answer", leg, other, ack, send)

    def hangup(self, origin: InboundLeg | OutboundLeg | None, side: str) -> None:
        """End an answered call: send BYE to every leg but ``origin``."""
        if self.state == "ended":
            return
        if self.application is not None:
            self._stop_attempt()
            self.application.close_media()
            self.application.ended.set()
        for leg in (self.inbound, self.answered):
            if leg is None or leg is origin or leg.dialog is None:
                continue
            if isinstance(leg, OutboundLeg) and leg.ack is None:
                # The callee's 2xx was never acknowledged: ACK it first so the BYE is valid.
                dialog = leg.dialog
                host, port = self.core.local_address(dialog.peer)
                leg.ack = dialog.create_request("ACK", host, port, cseq=leg.request.cseq.number)
                self.core.transactions.send_stateless(leg.ack, dialog.peer)
            dialog = leg.dialog
            host, port = self.core.local_address(dialog.peer)
            bye = dialog.create_request("BYE", host, port)
            self.core.transactions.send_request(bye, dialog.peer, _IGNORE)
        self.state = "ended"
        self._end(side)

    def _other(self, leg: InboundLeg | OutboundLeg) -> InboundLeg | OutboundLeg | None:
        return self.answered if leg is self.inbound else self.inbound

    @staticmethod
    def _copy_body_headers(source: Request | Response, target: Request | Response) -> None:
        if not source.body:
            return
        for name in _BODY_HEADERS:
            value = source.headers.get(name)
            if value is not None:
                target.headers.set(name, value)

    def _end(self, hangup_side: str) -> None:
        now = self.core.clock.wall()
        self.media.close()
        self.manager.relayed.pop(self.call_id, None)
        self.manager.forget(self)
        self.manager.limits.release(self)
        answered = self.answer_time is not None
        disposition = _disposition(self.final_status, answered)
        billable = int(round(now - self.answer_time)) if self.answer_time is not None else 0
        self.manager.cdr.record(
            CdrRecord(
                call_id=self.call_id,
                caller=self.caller.number,
                callee=self.callee.number,
                start=self.started,
                answer=self.answer_time,
                end=now,
                duration=round(now - self.started, 3),
                billable_seconds=billable,
                disposition=disposition,
                sip_status=self.final_status,
                hangup_side=hangup_side,
            )
        )
        log.info(
            "call end %s: %s -> %s %s (%d) after %.1fs, hangup by %s",
            self.call_id,
            self.caller.number,
            self.callee.number,
            disposition,
            self.final_status,
            now - self.started,
            hangup_side,
        )


def _outcome_of(status: int) -> Outcome:
    if status in (486, 600):
        return Outcome.BUSY
    if status in (603, 403):
        return Outcome.REJECT
    if status == 408:
        return Outcome.NO_ANSWER
    if status in (404, 410, 480, 484, 503, 604):
        return Outcome.UNREACHABLE
    return Outcome.FAILURE


def _disposition(status: int, answered: bool) -> str:
    if answered:
        return "ANSWERED"
    if status in (486, 600):
        return "BUSY"
    if status == 487:
        return "CANCELLED"
    if status == 408:
        return "NO ANSWER"
    if status in (404, 480, 410, 604):
        return "UNAVAILABLE"
    return "FAILED"


class CallManager:
    """Admits new calls between extensions and routes in-dialog requests to their legs."""

    def __init__(
        self,
        core: PbxCore,
        location: LocationService,
        cdr: CdrRecorder,
        router: Router,
        store: ExtensionStore | None = None,
    ) -> None:
        self.core = core
        self.location = location
        self.cdr = cdr
        self.router = router
        self.directory = router.directory
        self.store = store
        self._hunt_positions: dict[str, int] = {}
        # Told (group, position) when an answer moves a circular hunt (worker processes
        # share the positions: ``pbx.workers``).
        self.on_hunt_moved: Callable[[str, int], None] | None = None
        self.applications: dict[str, Application] = {}
        media = core.settings.media
        self.ports = PortAllocator(media.rtp_port_min, media.rtp_port_max)
        self.calls: set[Call] = set()
        self._dialogs: dict[tuple[str, str], InboundLeg | OutboundLeg] = {}
        self._dialog_keys: dict[int, list[tuple[str, str]]] = {}
        self.limits = CallLimits()
        self.trunks: TrunkService | None = None
        self.relay: RelayBackend | None = None
        self.relayed: dict[str, Call] = {}  # relayed calls by relay call id
        # The contacts of an extension a call may ring: by default every binding; the NAT
        # keepalive leaves out phones that stopped answering (calls to them fail at once).
        self.reachable: Callable[[str], list[Binding]] = location.lookup

    def use_relay(self, relay: RelayBackend) -> None:
        """Relay the media of the calls that need it through ``relay``."""
        self.relay = relay
        relay.on_inactive = self._media_inactive

    def _media_inactive(self, call_id: str) -> None:
        call = self.relayed.get(call_id)
        if call is not None:
            call.on_media_inactive()
        elif self.relay is not None:
            self.core.spawn(self.relay.delete(call_id))

    # --- dialog table ---
    def register_dialog(self, dialog: Dialog, leg: InboundLeg | OutboundLeg) -> None:
        key = (dialog.call_id, dialog.local_tag)
        self._dialogs[key] = leg
        self._dialog_keys.setdefault(id(leg.call), []).append(key)

    def leg_for(self, request: Request) -> InboundLeg | OutboundLeg | None:
        tag = request.to.tag
        if tag is None:
            return None
        return self._dialogs.get((request.call_id, tag))

    def forget(self, call: Call) -> None:
        self.calls.discard(call)
        # Keep the dialogs a little longer so late BYE/ACK retransmissions still match.
        keys = self._dialog_keys.pop(id(call), [])
        if keys:
            self.core.clock.call_later(32.0, self._drop_keys, keys)

    def _drop_keys(self, keys: list[tuple[str, str]]) -> None:
        for key in keys:
            self._dialogs.pop(key, None)

    def route_in_dialog(
        self, request: Request, txn: ServerTransaction | None, source: Address
    ) -> bool:
        leg = self.leg_for(request)
        if leg is None:
            return False
        call = leg.call
        if call.state == "ended":
            if request.method == "BYE" and txn is not None:
                self.core.respond(txn, 200, to_tag=request.to.tag)
            elif request.method != "ACK" and txn is not None:
                self.core.respond(txn, 481, to_tag=request.to.tag)
            return True
        call.in_dialog(leg, request, txn, source)
        return True

    # --- new calls ---
    def handle_invite(self, request: Request, txn: ServerTransaction, source: Address) -> None:
        self.core.spawn(self.place_call(txn, source), txn)

    async def place_call(self, txn: ServerTransaction, source: Address) -> None:
        core = self.core
        request = txn.request
        if not core.accepting_calls:
            core.respond(txn, 503, "Shutting down", headers={"Retry-After": "30"})
            return
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            core.respond(txn, 483)
            return
        if request.body and request.content_type not in _MEDIA_TYPES:
            core.respond(txn, 415, headers={"Accept": "application/sdp"})
            return
        accept = request.headers.values("Accept")
        if accept and not any(
            a.split(";")[0].strip().lower() in ("application/sdp", "*/*", "application/*")
            for a in accept
        ):
            core.respond(txn, 406, headers={"Accept": "application/sdp"})
            return
        trunk = self.trunks.identify(source) if self.trunks is not None else None
        if trunk is not None:
            self.place_trunk_call(txn, source, trunk, max_forwards)
            return
        from_uri = request.from_.uri
        if not isinstance(from_uri, SipUri):
            core.respond(txn, 403, "From must be a SIP URI")
            return
        caller_ext = await core.authenticate(txn, from_uri.user_unescaped, proxy=True)
        if caller_ext is None or txn.cancelled:
            if txn.cancelled and txn.last_response is None:
                core.respond(txn, 487)
            return
        uri = request.uri
        assert isinstance(uri, SipUri)
        number = uri.user_unescaped
        if number.startswith("*") and await self.feature_code(txn, caller_ext, number):
            return
        route = self.router.resolve(number, caller_ext.number)
        destination = route.destination
        if number == VOICEMAIL_ACCESS_CODE:
            destination = ToApplication("voicemail-access", caller_ext.number)
        if isinstance(destination, Reject):
            core.respond(txn, destination.status, destination.reason)
            return
        call = Call(
            self,
            txn,
            source,
            _party(caller_ext, request.from_.display_text),
            CallParty(number, ""),
            caller_ext,
        )
        refusal = self.limits.admit(call, caller_ext, None)
        if refusal is not None:
            log.info(
                "call refused %s: %s -> %s: %s",
                request.call_id,
                caller_ext.number,
                number,
                refusal.reason,
            )
            core.respond(txn, refusal.status, refusal.reason)
            return
        self.calls.add(call)
        call.start(destination, (70 if max_forwards is None else max_forwards) - 1)

    def place_trunk_call(
        self,
        txn: ServerTransaction,
        source: Address,
        trunk: TrunkSettings,
        max_forwards: int | None,
    ) -> None:
        """A call from a trunk: trusted by its address (no digest), routed by the called number
        (``Router.resolve_inbound``), counted against the trunk's incoming limit."""
        request = txn.request
        number = _called_number(request)
        caller = _trunk_caller(request)
        profile = trunk_profile(trunk.name, "in")
        limit = trunk.max_incoming
        call = Call(self, txn, source, caller, CallParty(number, ""), None, trunk)
        # Checked and counted in one step: other server processes share the limit.
        refusal = self.limits.join_or_refuse(
            call, profile, limit, f"Max incoming calls reached ({limit})"
        )
        if refusal is not None:
            log.info(
                "call refused %s: from trunk %s to %s: %s",
                request.call_id,
                trunk.name,
                number,
                refusal.reason,
            )
            self.core.respond(txn, refusal.status, refusal.reason)
            return
        route = self.router.resolve_inbound(trunk, number, caller.number)
        destination = route.destination
        if isinstance(destination, Reject):
            self.limits.release(call)
            log.info(
                "call refused %s: from trunk %s, %s -> %s: %d %s",
                request.call_id,
                trunk.name,
                caller.number,
                number,
                destination.status,
                destination.reason,
            )
            self.core.respond(txn, destination.status, destination.reason)
            return
        self.calls.add(call)
        log.info("call %s from trunk %s", request.call_id, trunk.name)
        call.start(destination, (70 if max_forwards is None else max_forwards) - 1)

    async def feature_code(self, txn: ServerTransaction, caller: Extension, code: str) -> bool:
        """Star codes that set the caller's forwarding: ``*93*NUMBER#`` (always), ``*90*``
        (busy), ``*92*`` (no answer), ``*91*`` (unreachable); ``*93#`` etc. clear. The
        ``feature-confirm`` application, when there is one, answers and says what was set;
        otherwise (and when it cannot answer) 480 with a reason phrase saying it."""
        match = _FEATURE_CODE.fullmatch(code)
        if match is None:
            return False
        kind = _FEATURE_KINDS[match.group(1)]
        target = match.group(2) or None
        refusal = self.limits.check_caller(caller)
        if refusal is not None:  # a star code is a call too (0: no calls at all)
            self.core.respond(txn, refusal.status, refusal.reason)
            return True
        if self.store is None:
            self.core.respond(txn, 503, "Settings cannot be changed")
            return True
        changes: dict[str, Any] = {f"forward_{kind}": target}
        await self.store.set(caller.number, **changes)
        await self.directory.load()
        reason = forwarding_reason(kind, target)
        log.info("extension %s: %s", caller.number, reason.lower())
        if FEATURE_CONFIRM in self.applications:
            request = txn.request
            party = _party(caller, request.from_.display_text)
            # No "#" in the number the server answers as: it is not allowed in a Contact user.
            call = Call(self, txn, txn.source, party, CallParty(code.rstrip("#"), ""), caller)
            self.limits.admit(call, caller, None)  # counted while the confirmation plays
            self.calls.add(call)
            hops = request.max_forwards
            confirm = ToApplication(FEATURE_CONFIRM, f"{kind}:{target or ''}")
            call.start(confirm, (70 if hops is None else hops) - 1)
            return True
        self.core.respond(txn, 480, reason)
        return True

    def start_application(self, call: Call, name: str, argument: str) -> None:
        """Hand the call to an application (it answers, plays, collects digits, calls on)."""
        application = self.applications.get(name)
        if application is None or call.application is not None:
            call.finish_unanswered(404, reason="Not Found")
            return
        session = ApplicationCall(call, self.ports)
        call.application = session
        self.core.spawn(self._run_application(application, session, argument))

    async def _run_application(
        self, application: Application, session: ApplicationCall, argument: str
    ) -> None:
        call = session.call
        try:
            await application.run(session, argument)
        except ApplicationError as exc:
            call.finish_unanswered(exc.status, hangup_side="system", reason=exc.reason)
        except Exception:
            log.exception("application %s failed on call %s", argument, call.call_id)
        finally:
            if call.state in ("ringing", "application"):
                await session.hangup()
            session.close_media()

    def notify_message_waiting(self, number: str, new: int, old: int) -> None:
        """Tell the extension's phones how many voicemail messages wait (RFC 3842, an
        unsolicited NOTIFY to every registered contact)."""
        core = self.core
        body = (
            f"Messages-Waiting: {'yes' if new else 'no'}\r\n"
            f"Message-Account: sip:{number}@{core.settings.sip.domain or 'localhost'}\r\n"
            f"Voice-Message: {new}/{old} (0/0)\r\n"
        ).encode()
        for binding in self.location.lookup(number):
            destination = Address(binding.transport, binding.source_host, binding.source_port)
            host, port = core.local_address(destination)
            ours = f"<sip:{number}@{format_host(host)}>"
            notify = new_request(
                "NOTIFY",
                binding.contact_uri,
                destination,
                (host, port),
                f"{ours};tag={new_tag()}",
                ours,
                new_call_id(host),
                1,
                core.settings.sip.user_agent,
            )
            notify.headers.add("Contact", f"<{core.contact_uri(number, destination)}>")
            notify.headers.add("Event", "message-summary")
            notify.headers.add("Subscription-State", "active")
            notify.headers.add("Content-Type", "application/simple-message-summary")
            notify.body = body
            core.transactions.send_request(notify, destination, _IGNORE)

    def next_hunt_position(self, group: str) -> int:
        return self._hunt_positions.get(group, 0)

    def hunt_answered(self, group: str, member_index: int) -> None:
        """Circular hunting starts after the member who answered last."""
        self._hunt_positions[group] = member_index + 1
        if self.on_hunt_moved is not None:
            self.on_hunt_moved(group, member_index + 1)

    def set_hunt_position(self, group: str, position: int) -> None:
        """Where circular hunting of ``group`` starts, as another process moved it."""
        self._hunt_positions[group] = position

    def hangup_all(self) -> None:
        for call in list(self.calls):
            if call.state == "answered":
                call.hangup(None, "system")
            elif call.state == "application":
                call.hangup(None, "system")
            elif call.state == "ringing":
                call.finish_unanswered(503, hangup_side="system")


def forwarding_reason(kind: str, target: str | None) -> str:
    """What a star code did, in words: "Forwarding busy to 202", "Forwarding always cleared"."""
    what = kind.replace("_", " ")
    return f"Forwarding {what} to {target}" if target else f"Forwarding {what} cleared"


def _party(extension: Extension, fallback_display: str) -> CallParty:
    return CallParty(extension.number, extension.display_name or fallback_display)


def _called_number(request: Request) -> str:
    """The number a trunk calls: the Request-URI user, else the To user."""
    uri = request.uri
    if isinstance(uri, SipUri) and uri.user:
        return uri.user_unescaped
    to = request.to.uri
    return to.user_unescaped if isinstance(to, SipUri) else ""


def _trunk_caller(request: Request) -> CallParty:
    """Who calls from a trunk: its P-Asserted-Identity (a trunk is trusted to assert it), else
    the From user; a number of unexpected shape becomes "anonymous"."""
    uris = []
    for value in request.headers.values("P-Asserted-Identity")[:2]:
        try:
            uris.append(parse_name_addr(value).uri)
        except SipError:
            continue
    uris.append(request.from_.uri)
    number = "anonymous"
    for uri in uris:
        if isinstance(uri, SipUri):
            user = uri.user_unescaped
        elif uri.scheme == "tel":
            user = uri.text[4:].split(";", 1)[0]
        else:
            continue
        if _TRUNK_CALLER.fullmatch(user):
            number = user
            break
    display = _CONTROL.sub("", request.from_.display_text)[:64]
    return CallParty(number, display)

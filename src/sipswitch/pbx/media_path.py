"""One call's media path: straight between the two phones, or through the media relay
("forward media stream").

``relay_reason`` says whether a pair of call legs needs the relay and why: an extension or a
trunk asks for it, ``[relay] always``, a side is behind NAT (its SDP or Contact names a private
address that is not where its signalling comes from), or the two sides are in different address
realms (one inside the local networks, one outside). Once a call is relayed it stays relayed.

``MediaPath`` passes every SDP that crosses from one leg to the other through the relay engine
(``media.relay_backend.RelayBackend``): offers with ``offer``, answers with ``answer``, each with
the server address the receiving leg can reach. Engines work asynchronously, so the messages of
a relayed call cross in a queue, strictly in the order they arrived: a 183's SDP is rewritten
before the 200 that follows it is passed on, and a 180 without SDP does not overtake it. Calls
that are not relayed pass their messages on at once, untouched.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from ..config.settings import RelaySettings
from ..media.ports import PortAllocator
from ..media.relay import InProcessRelay
from ..media.relay_backend import Leg, RelayBackend, RelayError, behind_nat
from ..media.rtpengine import NgClient, RtpEngineRelay
from ..sdp.model import SdpError
from ..sdp.model import parse as parse_sdp
from ..sdp.negotiate import rewrite_address
from ..sip.clock import Clock
from .addresses import AddressPlan

log = logging.getLogger("sipswitch.media")

Kind = Literal["offer", "answer"]
Spawn = Callable[[Coroutine[Any, Any, Any]], None]


def is_sdp(content_type: str | None, body: bytes | None) -> bool:
    """Whether a message body is a session description the relay must rewrite."""
    if not body or content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/sdp"


# The first connection line of an SDP: enough to tell where a phone says its media is.
_CONNECTION_LINE = re.compile(rb"^c=IN IP[46] ([0-9A-Fa-f.:]{2,45})\r?$", re.MULTILINE)


def sdp_host(body: bytes | None) -> str | None:
    """The first connection address of an SDP body, or None (no SDP or no usable c= line).
    A scan rather than a parse: it runs for every call the relay might serve."""
    if not body:
        return None
    found = _CONNECTION_LINE.search(body, 0, 8192)
    return found.group(1).decode("ascii") if found is not None else None


@dataclass(frozen=True, slots=True)
class Side:
    """What the relay decision needs to know about one leg: where its signalling comes from,
    the address it names for itself (SDP c= or Contact host), and whether it asks for the
    relay (its extension's or trunk's ``forward_media``)."""

    signalling_host: str
    named_host: str | None
    forward_media: bool = False
    label: str = ""


def relay_reason(caller: Side, callee: Side, plan: AddressPlan, always: bool) -> str | None:
    """Why the call between ``caller`` and ``callee`` must be relayed, or None."""
    if always:
        return "relay always on"
    for side in (caller, callee):
        if side.forward_media:
            return f"forward media on {side.label}"
    for side in (caller, callee):
        if behind_nat(side.named_host, side.signalling_host):
            return f"{side.label} behind NAT"
    if plan.realm(caller.signalling_host) != plan.realm(callee.signalling_host):
        return "sides in different address realms"
    return None


async def open_relay(
    settings: RelaySettings, allocator: PortAllocator, clock: Clock
) -> RelayBackend:
    """The relay engine ``[relay]`` names: in-process (ports from ``allocator``) or rtpengine."""
    if settings.engine == "rtpengine":
        host, _, port = settings.rtpengine.rpartition(":")
        client = await NgClient.open(host.strip("[]"), int(port), clock)
        return RtpEngineRelay(
            client, clock, interfaces=settings.rtpengine_interfaces, timeout=settings.timeout
        )
    return InProcessRelay(allocator, clock, timeout=settings.timeout)


def readdress(body: bytes, address: str) -> bytes:
    """``body`` (an SDP the relay wrote) naming ``address`` instead: the same relay ports seen
    from another realm."""
    return rewrite_address(parse_sdp(body), address).serialize()


@dataclass(slots=True)
class _Step:
    body: bytes | None
    rewrite: tuple[Kind, Leg, str, str, str] | None  # kind, from leg, peer, advertise, sender
    then: Callable[[bytes | None], None]
    failed: Callable[[RelayError], None]


class MediaPath:
    """The media of one call (relay call id ``call_id``): direct until ``engage``."""

    def __init__(self, call_id: str, relay: RelayBackend | None, spawn: Spawn) -> None:
        self.call_id = call_id
        self.relay = relay
        self.spawn = spawn
        self.relayed = False
        self.reason = ""
        self.closed = False
        self._queue: deque[_Step] = deque()
        self._draining = False

    def engage(self, reason: str) -> bool:
        """Relay this call from now on (when a relay is configured); True when relayed."""
        if self.relay is None or self.closed:
            return False
        if not self.relayed:
            self.relayed = True
            self.reason = reason
            log.info("call %s: media relayed (%s)", self.call_id, reason)
        return True

    def pass_on(
        self,
        content_type: str | None,
        body: bytes | None,
        rewrite: tuple[Kind, Leg, str, str, str] | None,
        then: Callable[[bytes | None], None],
        failed: Callable[[RelayError], None],
    ) -> None:
        """Hand ``body`` to ``then``: at once when the call is not relayed (or nothing is
        waiting and there is no SDP to rewrite); otherwise in order, rewritten by the relay
        when it is an SDP and ``rewrite`` = (kind, the leg it comes from, that leg's signalling
        host, the address the receiving leg reaches the relay at, the one the sending leg
        does). ``failed`` hears a ``RelayError`` instead of ``then``."""
        if not self.relayed or self.closed:
            then(body)
            return
        wanted = rewrite if is_sdp(content_type, body) else None
        if wanted is None and not self._queue and not self._draining:
            then(body)
            return
        self._queue.append(_Step(body, wanted, then, failed))
        if not self._draining:
            self._draining = True
            self.spawn(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue and not self.closed:
                step = self._queue.popleft()
                try:
                    body = await self._rewrite(step) if step.rewrite is not None else step.body
                except RelayError as exc:
                    self._report(step.failed, exc)
                    continue
                if not self.closed:
                    self._report(step.then, body)
        finally:
            self._draining = False

    async def _rewrite(self, step: _Step) -> bytes:
        assert step.rewrite is not None and step.body is not None and self.relay is not None
        kind, leg, peer, advertise, sender = step.rewrite
        try:
            sdp = parse_sdp(step.body)
        except SdpError as exc:
            raise RelayError(exc.reason, 400 if exc.status < 400 else exc.status) from None
        method = self.relay.offer if kind == "offer" else self.relay.answer
        try:
            result = await method(
                self.call_id, leg, sdp, peer_host=peer, advertise=advertise,
                sender_advertise=sender,
            )  # fmt: skip
        except RelayError:
            raise
        except (TimeoutError, OSError, ValueError) as exc:
            raise RelayError(f"media relay failed: {exc}") from None
        return result.serialize()

    @staticmethod
    def _report(callback: Callable[[Any], None], value: Any) -> None:
        try:
            callback(value)
        except Exception:  # one message's failure must not stop the call's queue
            log.exception("passing a relayed message on failed")

    def close(self) -> None:
        """The call ended: drop what waits and free the relay's ports."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        if self.relayed and self.relay is not None:
            self.spawn(self._delete(self.relay))

    async def _delete(self, relay: RelayBackend) -> None:
        try:
            await relay.delete(self.call_id)
        except (RelayError, OSError) as exc:
            log.warning("call %s: relay delete failed: %s", self.call_id, exc)

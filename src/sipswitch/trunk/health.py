"""OPTIONS health checks of a trunk: one OPTIONS every ``interval`` seconds; ``failures`` checks
in a row without an answer mark the trunk down, one answer marks it up again. Timers run on the
injected clock.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from ..sip.clock import Clock, TimerHandle
from ..sip.dialog import new_call_id
from ..sip.errors import SipError
from ..sip.message import Request
from ..sip.probe import Probe, new_request
from ..sip.transaction import new_tag
from ..sip.transport.base import Address
from ..sip.uri import format_host
from .registration import Sender

log = logging.getLogger("sipswitch.trunks")

MAX_WAIT = 5.0  # seconds a check waits for its answer at most


class Health(enum.Enum):
    UNKNOWN = "unknown"  # no check has ended yet
    UP = "up"
    DOWN = "down"


class HealthMonitor:
    """Checks one trunk; ``on_change`` is called when ``health`` changes."""

    def __init__(
        self,
        name: str,
        host: str,
        destination: Address,
        sender: Sender,
        clock: Clock,
        local_address: Callable[[Address], tuple[str, int]],
        interval: float,
        failures: int,
        on_change: Callable[[], None] = lambda: None,
        *,
        user_agent: str = "sipswitch",
    ) -> None:
        self.name = name
        self.host = host
        self.destination = destination
        self.sender = sender
        self.clock = clock
        self.local_address = local_address
        self.interval = interval
        self.failures_to_down = failures
        self.on_change = on_change
        self.user_agent = user_agent
        self.wait = min(interval, MAX_WAIT)
        self.health = Health.UNKNOWN
        self.detail = ""
        self.missed = 0  # checks in a row without an answer
        self.last_answer: float | None = None
        self.checks = 0
        self._probe: Probe | None = None
        self._timer: TimerHandle | None = None
        self._call_id = new_call_id(destination.host)
        self._tag = new_tag()
        self._cseq = 0
        self._running = False

    def start(self) -> None:
        self._running = True
        self._check()

    def stop(self) -> None:
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.end(False, "stopped", report=False)

    def _check(self) -> None:
        self._timer = None
        if not self._running:
            return
        self._timer = self.clock.call_later(self.interval, self._check)
        if self._probe is not None:
            self._probe.end(False, "no answer")  # the previous check's answer is overdue
        # Any answer but 503 shows a working SIP server (404 or 405 to OPTIONS included).
        probe = self._probe = Probe(self._probe_ended, lambda response: response.status != 503)
        self.checks += 1
        try:
            request = self._request()
        except (SipError, LookupError) as exc:
            probe.end(False, str(exc))
            return
        probe.send(self.sender.send_request, request, self.destination, self.clock, self.wait)

    def _request(self) -> Request:
        destination = self.destination
        host, port = self.local_address(destination)
        suffix = "" if destination.transport == "udp" else f";transport={destination.transport}"
        peer = f"sip:{format_host(self.host)}:{destination.port}"
        self._cseq += 1
        request = new_request(
            "OPTIONS",
            peer + suffix,
            destination,
            (host, port),
            f"<sip:sipswitch@{format_host(host)}>;tag={self._tag}",
            f"<{peer}>",
            self._call_id,
            self._cseq,
            self.user_agent,
        )
        request.headers.add("Accept", "application/sdp")
        return request

    def _probe_ended(self, probe: Probe, answered: bool, detail: str) -> None:
        if probe is not self._probe or not self._running:
            return
        before = self.health
        if answered:
            self.missed = 0
            self.last_answer = self.clock.now()
            self.health = Health.UP
        else:
            self.missed += 1
            if self.missed >= self.failures_to_down:
                self.health = Health.DOWN
        self.detail = detail
        if self.health is not before:
            if self.health is Health.DOWN:
                log.warning(
                    "trunk %s is down: %d checks without an answer (%s)",
                    self.name,
                    self.missed,
                    detail,
                )
            else:
                log.info("trunk %s is %s (%s)", self.name, self.health.value, detail)
            self.on_change()

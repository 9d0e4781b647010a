"""Protection against scanners, floods and password guessing: the gate every message passes
between the transports and the transaction layer (bans, a per-source request rate limit, silent
drops of known scanners), the ban bookkeeping fed by failed authentications, the overload check
for new requests. (Dialled numbers are checked against a strict syntax by ``routing``.)

Everything is O(1) per message: dict lookups keyed by the source address, tables bounded in size
(pruned in bulk, so a flood of new addresses costs amortised constant time) and in time (entries
expire on the injected clock). Responses always pass: they can only match transactions we
started.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any

from ..config.settings import SecuritySettings
from ..sip.clock import Clock
from ..sip.message import Message, Request
from ..sip.parser import MessageError
from ..sip.transport.base import Address, MessageSink

log = logging.getLogger("sipswitch.security")

MAX_SOURCES = 100_000


def _prune(table: MutableMapping[str, Any], expired: Callable[[Any], bool], limit: int) -> None:
    """Make room in a full table: drop expired entries, then the oldest until a quarter of the
    room is free (so the next prune is at least ``limit / 4`` insertions away)."""
    for key in [k for k, v in table.items() if expired(v)]:
        del table[key]
    target = limit - limit // 4
    while len(table) > target:
        del table[next(iter(table))]


class AllowList:
    """Networks exempt from bans and rate limits; answers are cached per address."""

    def __init__(self, networks: list[str], cache_size: int = 65_536) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size

    def __contains__(self, host: str) -> bool:
        found = self._cache.get(host)
        if found is None:
            if not self.networks:
                return False
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                found = False
            else:
                found = any(address in network for network in self.networks)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[host] = found
        return found


class SecurityGate(MessageSink):
    """A ``MessageSink`` in front of ``inner`` (the transaction layer) that drops requests from
    banned sources, over the rate limit, or from scanners; also the place failed
    authentications are reported to (``auth_failed``) and the overload check (``overloaded``)."""

    def __init__(
        self,
        settings: SecuritySettings,
        clock: Clock,
        inner: MessageSink | None = None,
        *,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.inner = inner
        self.allow = AllowList(settings.allow)
        self.max_sources = max_sources
        self.rate = float(settings.rate_limit)
        self.burst = float(settings.rate_burst)
        self.retry_after = str(settings.overload_retry_after)
        agents = settings.scanner_user_agents if settings.drop_scanners else []
        self._scanner = (
            re.compile("|".join(re.escape(a) for a in agents), re.IGNORECASE) if agents else None
        )
        self._bans: dict[str, float] = {}  # host -> banned until
        self._failures: dict[str, deque[float]] = {}
        self._buckets: dict[str, list[float]] = {}  # host -> [tokens, last refill, limited]
        self._overloaded = False
        self.dropped_banned = 0
        self.dropped_rate = 0
        self.dropped_scanner = 0
        self.overload_answers = 0
        self.bans = 0
        # Told (host, reason, seconds) of every ban: a worker process passes its bans to the
        # primary, which reads every socket (``pbx.workers``).
        self.on_ban: Callable[[str, str, float], None] | None = None

    # --- MessageSink ---
    def on_message(self, message: Message, source: Address, local: Address) -> None:
        if isinstance(message, Request) and not self.admit_request(message, source.host):
            return
        inner = self.inner
        if inner is not None:
            inner.on_message(message, source, local)

    def on_parse_error(self, error: MessageError, source: Address, local: Address) -> None:
        host = source.host
        if self.banned(host) or not self._within_rate(host):
            return
        inner = self.inner
        if inner is not None:
            inner.on_parse_error(error, source, local)

    # --- the checks ---
    def admit_request(self, request: Request, host: str) -> bool:
        """False when the request must be dropped without an answer."""
        if self._bans and self.banned(host):
            self.dropped_banned += 1
            return False
        if self.rate and not self._within_rate(host):
            return False
        scanner = self._scanner
        if scanner is not None:
            agent = request.headers.get("User-Agent")
            if agent is not None and scanner.search(agent) is not None:
                self.dropped_scanner += 1
                if self.dropped_scanner == 1 or self.dropped_scanner % 1000 == 0:
                    log.info(
                        "dropping requests from scanners (%d so far; last %s, %r)",
                        self.dropped_scanner,
                        host,
                        agent[:80],
                    )
                return False
        return True

    def admit_source(self, host: str) -> bool:
        """The checks that need only the source (bans, the rate limit) for a request handed
        unparsed to a worker process: the primary sees every request, so its count per source
        is the whole one."""
        if self._bans and self.banned(host):
            self.dropped_banned += 1
            return False
        return not self.rate or self._within_rate(host)

    def admit_connection(self, host: str) -> bool:
        """Whether a TCP/TLS connection from ``host`` may be accepted (not banned)."""
        if self._bans and self.banned(host):
            self.dropped_banned += 1
            return False
        return True

    def banned(self, host: str) -> bool:
        until = self._bans.get(host)
        if until is None:
            return False
        if until > self.clock.now():
            return True
        del self._bans[host]
        return False

    def _within_rate(self, host: str) -> bool:
        """Token bucket per source: ``rate_limit`` requests per second, ``rate_burst`` at once."""
        if not self.rate:
            return True
        now = self.clock.now()
        bucket = self._buckets.get(host)
        if bucket is None:
            if host in self.allow:
                return True
            buckets = self._buckets
            if len(buckets) >= self.max_sources:
                full_after = self.burst / self.rate
                _prune(buckets, lambda b: now - b[1] >= full_after, self.max_sources)
            buckets[host] = [self.burst - 1.0, now, 0.0]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            self.dropped_rate += 1
            if not bucket[2]:
                bucket[2] = 1.0
                log.warning(
                    "rate limit: dropping requests from %s (over %d/s, burst %d)",
                    host,
                    self.rate,
                    self.burst,
                )
            return False
        bucket[0] = tokens - 1.0
        if bucket[2]:
            bucket[2] = 0.0
            log.info("rate limit: %s is below the limit again", host)
        return True

    # --- authentication failures and bans ---
    def auth_failed(self, host: str) -> bool:
        """Count a failed authentication from ``host``; True when this one got it banned."""
        if host in self.allow:
            return False
        now = self.clock.now()
        failures = self._failures
        times = failures.get(host)
        if times is None:
            if len(failures) >= self.max_sources:
                window = self.settings.ban_window
                _prune(failures, lambda t: now - t[-1] > window, self.max_sources)
            times = failures[host] = deque(maxlen=self.settings.ban_failures)
        times.append(now)
        if len(times) < self.settings.ban_failures or now - times[0] > self.settings.ban_window:
            return False
        del failures[host]
        self.ban(
            host,
            reason=(
                f"{self.settings.ban_failures} failed authentications within "
                f"{self.settings.ban_window} s"
            ),
        )
        return True

    def ban(self, host: str, reason: str, seconds: float | None = None) -> None:
        """Ignore ``host`` for ``seconds`` (default ``ban_time``); one log line per ban:

        ``ban 192.0.2.7: 5 failed authentications within 60 s; ignored for 300 s``
        """
        duration = float(self.settings.ban_time if seconds is None else seconds)
        now = self.clock.now()
        bans = self._bans
        if host not in bans and len(bans) >= self.max_sources:
            _prune(bans, lambda until: until <= now, self.max_sources)
        bans[host] = now + duration
        self.bans += 1
        log.warning("ban %s: %s; ignored for %d s", host, reason, duration)
        if self.on_ban is not None:
            self.on_ban(host, reason, duration)

    def unban(self, host: str) -> bool:
        return self._bans.pop(host, None) is not None

    @property
    def banned_count(self) -> int:
        return len(self._bans)

    @property
    def tracked_sources(self) -> int:
        """Entries held in the rate, failure and ban tables together."""
        return len(self._buckets) + len(self._failures) + len(self._bans)

    # --- overload ---
    def overloaded(self, pending: int) -> bool:
        """Whether a new request must get 503: ``pending`` requests are already in progress."""
        over = pending >= self.settings.overload_pending
        if over:
            self.overload_answers += 1
        if over != self._overloaded:
            self._overloaded = over
            if over:
                log.warning("overload: %d requests in progress, answering 503", pending)
            else:
                log.info("overload over: %d requests in progress", pending)
        return over

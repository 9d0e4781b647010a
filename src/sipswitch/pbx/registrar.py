"""The registrar (RFC 3261 §10.3): authenticates REGISTER and maintains an extension's bindings.

Bounds: Expires between ``min_expires`` (423 below it) and ``max_expires`` (clamped), at most
``max_contacts`` bindings per extension (the least recently refreshed one makes room for a new
one, so a phone that rebooted onto a new port is never locked out). The 200 lists every current
binding; a REGISTER without Contact fetches them.
"""

from __future__ import annotations

from email.utils import formatdate

from ..sip.errors import SipError
from ..sip.headers import NameAddr, parse_uint
from ..sip.message import Request
from ..sip.transaction import ServerTransaction
from ..sip.transport.base import Address
from ..sip.uri import SipUri
from ..store import Binding
from .core import PbxCore, log
from .location import LocationService

MAX_EXPIRES_VALUE = 2**32 - 1


class Registrar:
    def __init__(self, core: PbxCore, location: LocationService) -> None:
        self.core = core
        self.location = location
        settings = core.settings.registrar
        self.min_expires = settings.min_expires
        self.max_expires = settings.max_expires
        self.default_expires = settings.default_expires
        self.max_contacts = settings.max_contacts

    def handle(self, request: Request, txn: ServerTransaction, source: Address) -> None:
        self.core.spawn(self.register(txn, source), txn)

    async def register(self, txn: ServerTransaction, source: Address) -> None:
        core = self.core
        request = txn.request
        to_uri = request.to.uri
        if not isinstance(to_uri, SipUri):
            core.respond(txn, 400, "To must be a SIP URI")
            return
        aor = to_uri.user_unescaped
        if not aor:
            core.respond(txn, 404)
            return
        extension = await core.authenticate(txn, aor, proxy=False)
        if extension is None:
            return
        try:
            contacts = request.contacts
            header_expires = self._header_expires(request.headers.get("Expires"))
        except SipError as exc:
            core.respond(txn, 400, exc.reason)
            return
        now = core.clock.wall()
        current = self.location.lookup(aor)
        call_id = request.call_id
        cseq = request.cseq.number
        if contacts is None:  # Contact: *
            if header_expires != 0:
                core.respond(txn, 400, "Wildcard Contact requires Expires: 0")
                return
            self.location.replace(aor, [], current)
            await self._answer(txn, aor)
            return
        if not contacts:
            await self._answer(txn, aor)
            return
        bindings = {b.contact_uri: b for b in current}
        changed: list[Binding] = []
        for contact in contacts:
            if not isinstance(contact.uri, SipUri):
                core.respond(txn, 400, "Contact must be a SIP URI")
                return
            try:
                expires = self._contact_expires(contact, header_expires)
            except SipError as exc:
                core.respond(txn, 400, exc.reason)
                return
            if 0 < expires < self.min_expires:
                core.respond(txn, 423, headers={"Min-Expires": str(self.min_expires)})
                return
            key = str(contact.uri)
            existing = bindings.get(key)
            if existing is not None and existing.call_id == call_id and existing.cseq >= cseq:
                core.respond(txn, 400, "CSeq out of order")
                return
            if expires == 0:
                bindings.pop(key, None)
                continue
            instance = contact.params.get("+sip.instance")
            if instance:
                for other in [b for b in bindings.values() if b.instance_id == instance]:
                    if other.contact_uri != key:
                        del bindings[other.contact_uri]
            params = {k: v for k, v in contact.params.items() if k != "expires"}
            bindings[key] = binding = Binding(
                aor=aor,
                contact_uri=key,
                contact_value=str(NameAddr(contact.uri, contact.display, params)),
                expires_at=now + min(expires, self.max_expires),
                q=_q_value(contact.params.get("q")),
                call_id=call_id,
                cseq=cseq,
                transport=source.transport,
                source_host=source.host,
                source_port=source.port,
                user_agent=(request.headers.get("User-Agent") or "")[:200],
                instance_id=instance,
                reg_id=_reg_id(contact.params.get("reg-id")),
            )
            changed.append(binding)
        kept = sorted(bindings.values(), key=lambda b: b.expires_at)
        if len(kept) > self.max_contacts:
            kept = kept[len(kept) - self.max_contacts :]
        kept_keys = {b.contact_uri for b in kept}
        removed = [b for b in current if b.contact_uri not in kept_keys]
        if self.location.full(aor):
            core.respond(txn, 503, "Location table full", headers={"Retry-After": "60"})
            return
        self.location.replace(
            aor, kept, removed, [b for b in changed if b.contact_uri in kept_keys]
        )
        await self._answer(txn, aor)

    async def _answer(self, txn: ServerTransaction, aor: str) -> None:
        try:
            await self.location.committed()
        except Exception:  # noqa: BLE001 - the store is down: say so, keep serving
            self.core.respond(txn, 500, "Registration could not be stored")
            return
        now = self.core.clock.wall()
        response = self.core.build_response(txn.request, 200)
        for binding in self.location.lookup(aor):
            remaining = max(0, int(binding.expires_at - now))
            response.headers.add("Contact", f"{binding.contact_value};expires={remaining}")
        response.headers.add("Date", _http_date(now))
        txn.respond(response)
        log.debug("registered %s: %d bindings", aor, len(self.location.lookup(aor)))

    def _header_expires(self, value: str | None) -> int | None:
        if value is None:
            return None
        return _bounded_expires(value)

    def _contact_expires(self, contact: NameAddr, header_expires: int | None) -> int:
        raw = contact.params.get("expires")
        if raw is not None:
            return _bounded_expires(raw)
        if header_expires is not None:
            return header_expires
        return self.default_expires


def _bounded_expires(value: str) -> int:
    text = value.strip()
    if text.isdigit() and len(text.lstrip("0")) > 10:
        return MAX_EXPIRES_VALUE  # RFC 4475 §3.1.2.4: overlarge values are clamped, not refused
    return parse_uint(text, MAX_EXPIRES_VALUE, "Expires")


def _q_value(raw: str | None) -> float:
    if raw is None:
        return 1.0
    try:
        q = float(raw[:6])
    except ValueError:
        return 1.0
    return min(max(q, 0.0), 1.0)


def _reg_id(raw: str | None) -> int | None:
    if raw is None or not raw.isdigit() or len(raw) > 9:
        return None
    return int(raw)


def _http_date(epoch: float) -> str:
    return formatdate(epoch, usegmt=True)

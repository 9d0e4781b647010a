"""Which of the server's addresses a peer is told about: the local address toward the local
networks, the external address toward everyone else (the server behind a NAT or a firewall with a
public address), and which address realm a peer is in.

The rule is the same for SIP (Via, Contact) and for SDP (the relay's and the server's own media
address), so it lives here once. An address of the other IP family than the one configured is
never substituted: toward an IPv6 peer the IPv6 address the system routes from is used.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Literal

from ..config.settings import NatSettings

Realm = Literal["local", "external"]

_CACHE_LIMIT = 65_536


class AddressPlan:
    """The ``[nat]`` settings as answers: ``realm(host)`` and ``advertised(host, routed)``."""

    def __init__(self, nat: NatSettings) -> None:
        self.local_address = nat.local_address
        self.external_address = nat.external_address
        self._networks = [ipaddress.ip_network(net) for net in nat.local_networks]
        self._local_version = _version(nat.local_address)
        self._external_version = _version(nat.external_address)
        self._realms: dict[str, Realm] = {}

    @property
    def has_external(self) -> bool:
        return bool(self.external_address)

    def realm(self, host: str) -> Realm:
        """"local" for an address inside the local networks, "external" for any other address
        (a host name counts as external: it is resolved on the Internet)."""
        found = self._realms.get(host)
        if found is not None:
            return found
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            found = "external"
        else:
            inside = any(
                address in net for net in self._networks if net.version == address.version
            )
            found = "local" if inside else "external"
        if len(self._realms) >= _CACHE_LIMIT:
            self._realms.clear()
        self._realms[host] = found
        return found

    def advertised(self, peer_host: str, routed: str) -> str:
        """The address to name toward ``peer_host``; ``routed`` is the one the system would send
        from (used when nothing configured applies)."""
        if not self.external_address and not self.local_address:
            return routed  # nothing configured: the common case, asked several times a call
        version = _version(routed)
        if self.realm(peer_host) == "external":
            if self.external_address and self._external_version == version:
                return self.external_address
        elif self.local_address and self._local_version == version:
            return self.local_address
        return routed


@functools.lru_cache(maxsize=1024)
def _version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host.strip("[]")).version
    except ValueError:
        return None

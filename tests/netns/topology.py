"""A NAT test topology in network namespaces, built and torn down by the tests:

    lan (phones)          router (nftables NAT)          server                 wan
    10.200.1.1  ---- 10.200.1.254 | 10.200.2.254 ---- 10.200.2.1 | 198.51.100.1 ---- 198.51.100.2
                                                     (local)       (external)        198.51.100.3

The router masquerades the LAN behind 10.200.2.254 with random source ports and lets back in
only what answers an outgoing flow; the server has no route to 10.200.1.0/24, so only the NAT
makes replies to a phone work. The server's local address faces the router, its external one
the WAN, where a peer (.2) and a third party (.3) live.

Needs root (or CAP_NET_ADMIN), iproute2 and nftables; ``unavailable()`` says why not.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
COMMAND_TIMEOUT = 15.0

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


class TopologyError(RuntimeError):
    """A command building the topology failed."""


def _run(*args: str, input_text: str | None = None, check: bool = True) -> str:
    try:
        done = subprocess.run(
            args, input=input_text, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TopologyError(f"{' '.join(args)}: {exc}") from None
    if check and done.returncode != 0:
        raise TopologyError(f"{' '.join(args)}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why network namespace tests cannot run here, or None when they can."""
    if not os.path.exists(IP):
        return "iproute2 (ip) is not installed"
    if not os.path.exists(NFT):
        return "nftables (nft) is not installed"
    probe = f"ssw-probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        _run(IP, "netns", "add", probe)
    except TopologyError as exc:
        return f"cannot create network namespaces: {exc}"
    try:
        _run(IP, "netns", "exec", probe, NFT, "list", "ruleset")
    except TopologyError as exc:
        return f"cannot use nftables in a network namespace: {exc}"
    finally:
        _run(IP, "netns", "delete", probe, check=False)
    return None


def remove_stale() -> list[str]:
    """Delete the namespaces of earlier runs whose process is gone (a run killed before its
    clean-up); returns their names."""
    removed = []
    for line in _run(IP, "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith("ssw") or "x" not in name:
            continue
        pid = name[3 : name.index("x")]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _run(IP, "netns", "delete", name, check=False)
            removed.append(name)
    return removed


@dataclass
class NatTopology:
    """The namespaces and addresses above. ``create()`` builds them (tearing down what was made
    if a step fails); ``destroy()`` removes them and is safe to call at any time."""

    # Namespace names carry the creating process id, so leftovers of a killed run are known.
    prefix: str = field(default_factory=lambda: f"ssw{os.getpid()}x{secrets.token_hex(2)}")
    phone: str = "10.200.1.1"
    router_lan: str = "10.200.1.254"
    nat_public: str = "10.200.2.254"  # the NAT's outside address, as the server sees it
    server_local: str = "10.200.2.1"
    server_external: str = "198.51.100.1"
    wan_peer: str = "198.51.100.2"
    third: str = "198.51.100.3"
    created: list[str] = field(default_factory=list)

    @property
    def lan(self) -> str:
        return f"{self.prefix}-lan"

    @property
    def router(self) -> str:
        return f"{self.prefix}-nat"

    @property
    def server(self) -> str:
        return f"{self.prefix}-srv"

    @property
    def wan(self) -> str:
        return f"{self.prefix}-wan"

    def create(self) -> NatTopology:
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise
        return self

    def _build(self) -> None:
        for ns in (self.lan, self.router, self.server, self.wan):
            _run(IP, "netns", "add", ns)
            self.created.append(ns)
            _run(IP, "-n", ns, "link", "set", "lo", "up")
        # Each veth pair is made with its ends already in their namespaces: nothing is left
        # in the host's own namespace, even if the test dies.
        links = (
            (self.lan, "lan0", self.router, "rlan"),
            (self.router, "rout", self.server, "slocal"),
            (self.server, "sext", self.wan, "wan0"),
        )
        for ns_a, name_a, ns_b, name_b in links:
            _run(IP, "link", "add", name_a, "netns", ns_a, "type", "veth",
                 "peer", "name", name_b, "netns", ns_b)
        addresses = (
            (self.lan, "lan0", self.phone),
            (self.router, "rlan", self.router_lan),
            (self.router, "rout", self.nat_public),
            (self.server, "slocal", self.server_local),
            (self.server, "sext", self.server_external),
            (self.wan, "wan0", self.wan_peer),
            (self.wan, "wan0", self.third),
        )
        for ns, dev, address in addresses:
            _run(IP, "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        for ns, dev, _ in addresses:
            _run(IP, "-n", ns, "link", "set", dev, "up")
        _run(IP, "-n", self.lan, "route", "add", "default", "via", self.router_lan)
        _run(IP, "netns", "exec", self.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        ruleset = f"""
table ip nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {self.phone.rsplit('.', 1)[0]}.0/24 oifname "rout" masquerade random
    }}
}}
table ip filter {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "rlan" oifname "rout" accept
    }}
}}
"""
        _run(IP, "netns", "exec", self.router, NFT, "-f", "-", input_text=ruleset)

    def destroy(self) -> None:
        while self.created:
            _run(IP, "netns", "delete", self.created.pop(), check=False)

    # --- running things inside ----------------------------------------------------------------

    def command(self, ns: str, *args: str) -> list[str]:
        return [IP, "netns", "exec", ns, *args]

    def python(self, ns: str, script: Path, *args: str) -> list[str]:
        """A command running a Python script of this project inside ``ns``."""
        return self.command(ns, sys.executable, str(script), *args)

    def run(self, ns: str, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        done = subprocess.run(
            self.command(ns, *args), capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise TopologyError(f"{' '.join(args)} in {ns}: {done.stderr.strip()}")
        return done.stdout

    def __enter__(self) -> NatTopology:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

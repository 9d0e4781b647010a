"""Free loopback ports for servers and peers started by the black-box tests and the benchmark."""

from __future__ import annotations

import random
import socket
from pathlib import Path

HOST = "127.0.0.1"

# Other SIP tools on the machine default to these; never hand them out.
_RESERVED = set(range(5060, 5091)) | set(range(6000, 6011))


def _bindable(port: int, host: str = HOST) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = HOST) -> int:
    """A port free for both UDP and TCP on ``host`` (the kernel picks it; bounded retries)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _RESERVED and _bindable(port, host):
            return port
    raise RuntimeError("no free UDP+TCP port found on " + host)


def free_port_block(count: int, host: str = HOST) -> int:
    """The first of ``count`` consecutive ports free for UDP and TCP (for RTP port ranges).

    Chosen below the kernel's ephemeral range so that outgoing connections do not race for it.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000, 2)
        ports = range(base, base + count)
        if not any(p in _RESERVED for p in ports) and all(_bindable(p, host) for p in ports):
            return base
    raise RuntimeError(f"no block of {count} free ports found on {host}")


def port_in_use(port: int, transport: str = "udp", host: str = HOST) -> bool:
    """Whether some process listens on ``port`` (TCP) or has bound it (UDP) on ``host``.

    For TCP the kernel's socket table is read: a connection in TIME-WAIT on the port also
    makes ``bind`` fail, but it is no listener."""
    table = Path("/proc/net/tcp" if transport == "tcp" else "/proc/net/udp")
    if table.exists():
        wanted_state = "0A" if transport == "tcp" else "07"  # LISTEN / unconnected UDP
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == wanted_state:
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
        return False
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False

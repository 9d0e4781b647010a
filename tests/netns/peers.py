"""UDP peers for the relay tests (on loopback addresses, or run inside network namespaces),
and SDP bodies for a phone."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from sipswitch.media.rtp import RtpPacket
from sipswitch.sdp import SessionDescription, parse
from tests.media.support import WAIT


class UdpPeer(asyncio.DatagramProtocol):
    """A UDP socket on ``host`` (port 0 unless given) that queues every datagram it gets."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, addr))

    @classmethod
    async def open(cls, host: str = "127.0.0.1", port: int = 0) -> UdpPeer:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, sock=sock)
        return peer

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, dest)

    async def receive(self, timeout: float = WAIT) -> tuple[bytes, Any]:
        return await asyncio.wait_for(self.received.get(), timeout)

    async def nothing(self, wait: float = 0.2) -> bool:
        """True when no datagram arrives within ``wait`` seconds (for packets that must be
        dropped; the wait bounds the test, it does not measure speed)."""
        try:
            await asyncio.wait_for(self.received.get(), wait)
        except TimeoutError:
            return True
        return False

    def drain(self) -> list[bytes]:
        out = []
        while not self.received.empty():
            out.append(self.received.get_nowait()[0])
        return out

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def rtp(seq: int, ssrc: int = 0x1234, payload: bytes | None = None, pt: int = 0) -> bytes:
    """An RTP packet with a random (SRTP-like) payload unless one is given."""
    body = os.urandom(160) if payload is None else payload
    return RtpPacket(pt, seq, seq * 160, ssrc, body).build()


def rtcp_sr(ssrc: int = 0x1234) -> bytes:
    """A minimal RTCP sender report (PT 200) with random report contents."""
    return bytes([0x80, 200, 0, 6]) + ssrc.to_bytes(4, "big") + os.urandom(20)


def phone_sdp(
    host: str,
    port: int,
    *,
    direction: str = "sendrecv",
    extra: str = "",
    media_lines: str | None = None,
) -> SessionDescription:
    ip = "IP6" if ":" in host else "IP4"
    media = (
        media_lines
        if media_lines is not None
        else f"m=audio {port} RTP/AVP 0 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        f"a=fmtp:101 0-15\r\na={direction}\r\n"
    )
    text = (
        f"v=0\r\no=phone 42 7 IN {ip} {host}\r\ns=call\r\nc=IN {ip} {host}\r\nt=0 0\r\n"
        f"{media}{extra}"
    )
    return parse(text)

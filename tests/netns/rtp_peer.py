"""An RTP phone for tests run inside a network namespace: binds HOST:PORT, sends COUNT G.711
packets (20 ms apart unless told) to a target, records every packet it receives, and prints
one JSON line with what it got.

    python rtp_peer.py --bind 10.200.1.1:40000 --to 10.200.2.1:30000 --count 100 --ssrc 1
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import time


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", type=_address, required=True)
    parser.add_argument("--to", type=_address)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--ssrc", type=lambda s: int(s, 0), default=0x1234)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before sending")
    parser.add_argument("--linger", type=float, default=1.0, help="listen after the last send")
    parser.add_argument(
        "--expect", type=int, default=0, help="stop lingering once this many packets arrived"
    )
    args = parser.parse_args()
    count = max(0, min(args.count, 100_000))

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(args.bind)
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    received: list[tuple[str, int, int, int]] = []  # source host, port, ssrc, sequence
    start = time.monotonic() + args.delay
    sent = 0
    errors = 0
    end = start + count * args.interval + args.linger
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if args.expect and len(received) >= args.expect and sent >= count:
            break
        if args.to is not None and sent < count and now >= start + sent * args.interval:
            header = struct.pack("!BBHII", 0x80, 0, sent & 0xFFFF, sent * 160, args.ssrc)
            try:
                sock.sendto(header + bytes([0xFF]) * 160, args.to)
            except OSError:
                errors += 1  # no route: the far end does not get it
            sent += 1
            continue
        due = start + sent * args.interval if sent < count and args.to else end
        for _ in selector.select(max(0.0, min(due, end) - now)):
            while True:
                try:
                    data, source = sock.recvfrom(4096)
                except BlockingIOError:
                    break
                if len(data) >= 12:
                    _, _, seq, _, ssrc = struct.unpack("!BBHII", data[:12])
                    received.append((source[0], source[1], ssrc, seq))
    print(
        json.dumps(
            {
                "sent": sent,
                "send_errors": errors,
                "received": len(received),
                "sources": sorted({f"{h}:{p}" for h, p, _, _ in received}),
                "ssrcs": sorted({s for _, _, s, _ in received}),
                "sequences": sorted({q for _, _, _, q in received}),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

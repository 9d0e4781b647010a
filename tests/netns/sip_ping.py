"""Run inside a network namespace: sends SIP OPTIONS from HOST (an ephemeral port) to a server
every 0.2 s until one is answered 200, and prints that status line; exits 1 at the deadline.

    python sip_ping.py --bind 10.200.2.1 --to 10.200.2.1:5060 --wait 15
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--wait", type=float, default=15.0)
    args = parser.parse_args()
    host, _, port_text = args.to.rpartition(":")
    target = (host, int(port_text))
    deadline = time.monotonic() + min(args.wait, 120.0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((args.bind, 0))
        sock.settimeout(0.2)
        local_port = sock.getsockname()[1]
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            call_id = f"ping-{os.getpid()}-{attempt}@{args.bind}"
            request = (
                f"OPTIONS sip:{args.to} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {args.bind}:{local_port};branch=z9hG4bK-ping-{os.getpid()}-"
                f"{attempt};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:ping@{args.bind}>;tag=ping{attempt}\r\n"
                f"To: <sip:{args.to}>\r\n"
                f"Call-ID: {call_id}\r\n"
                f"CSeq: {attempt} OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            try:
                sock.sendto(request, target)
                answer_by = time.monotonic() + 0.2
                while time.monotonic() < answer_by:
                    data = sock.recv(65535)
                    if call_id.encode() in data and data.startswith(b"SIP/2.0 200"):
                        print(data.split(b"\r\n", 1)[0].decode(), flush=True)
                        return 0
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(0.1)
    return 1


if __name__ == "__main__":
    sys.exit(main())

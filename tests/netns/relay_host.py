"""Runs the in-process relay inside a network namespace for the tests, controlled over
stdin/stdout with one JSON object per line:

    {"op": "offer"|"answer", "call_id", "leg", "sdp", "peer_host", "advertise"}  -> {"sdp": ...}
    {"op": "stats", "call_id"}                                                  -> {"stats": ...}
    {"op": "delete", "call_id"}                                                 -> {}
    {"op": "quit"}

Errors come back as {"error": "..."}. It prints {"ready": true} once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any

from sipswitch.media.ports import PortAllocator
from sipswitch.media.relay import InProcessRelay
from sipswitch.media.relay_backend import RelayError
from sipswitch.sdp import parse


async def serve(relay: InProcessRelay) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await reader.readline()
        if not line:
            break
        request: dict[str, Any] = json.loads(line)
        op = request.get("op")
        reply: dict[str, Any] = {}
        try:
            if op in ("offer", "answer"):
                method = relay.offer if op == "offer" else relay.answer
                sdp = await method(
                    request["call_id"],
                    request["leg"],
                    parse(request["sdp"]),
                    peer_host=request["peer_host"],
                    advertise=request["advertise"],
                )
                reply["sdp"] = sdp.to_text()
            elif op == "stats":
                stats = await relay.stats(request["call_id"])
                reply["stats"] = None if stats is None else dataclasses.asdict(stats)
            elif op == "delete":
                await relay.delete(request["call_id"])
            elif op == "quit":
                break
            else:
                reply["error"] = f"unknown op {op!r}"
        except (RelayError, ValueError, KeyError) as exc:
            reply["error"] = str(exc)
        print(json.dumps(reply), flush=True)
    await relay.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", default="30000-30999")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    low, _, high = args.ports.partition("-")
    relay = InProcessRelay(PortAllocator(int(low), int(high)), timeout=args.timeout)
    asyncio.run(serve(relay))


if __name__ == "__main__":
    main()

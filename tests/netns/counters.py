"""Packet counters in a namespace, with nftables: named counters fed by rules on the input or
output hook, read back as numbers. They count what reaches (or leaves) a namespace's stack,
whether or not a socket takes it, so they see what a phone would hear."""

from __future__ import annotations

import json
import secrets
import subprocess

from .topology import COMMAND_TIMEOUT, NFT, NatTopology, TopologyError


class PacketCounters:
    """``rules`` maps a counter's name to an nftables match (``"ip saddr 10.200.2.1"``) on the
    ``hook`` ("input" or "output") of namespace ``ns``. ``remove()`` deletes the table."""

    def __init__(
        self, topology: NatTopology, ns: str, rules: dict[str, str], hook: str = "input"
    ) -> None:
        self.topology = topology
        self.ns = ns
        self.table = f"ssw_count_{secrets.token_hex(3)}"
        lines = [f"table inet {self.table} {{"]
        lines += [f"    counter {name} {{ }}" for name in rules]
        lines.append(f"    chain {hook} {{ type filter hook {hook} priority filter; policy accept;")
        lines += [f"        {match} counter name {name}" for name, match in rules.items()]
        lines += ["    }", "}"]
        done = subprocess.run(
            topology.command(ns, NFT, "-f", "-"),
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        if done.returncode != 0:
            raise TopologyError(f"nft in {ns}: {done.stderr.strip()}")

    def read(self) -> dict[str, int]:
        """Packets counted so far, by counter name."""
        text = self.topology.run(
            self.ns, NFT, "-j", "list", "counters", "table", "inet", self.table
        )
        counts: dict[str, int] = {}
        for item in json.loads(text)["nftables"]:
            counter = item.get("counter")
            if counter is not None:
                counts[counter["name"]] = int(counter["packets"])
        return counts

    def remove(self) -> None:
        self.topology.run(self.ns, NFT, "delete", "table", "inet", self.table)


def rtp_ssrc(ssrc: int) -> str:
    """An nftables match for RTP over UDP with this SSRC (bytes 8-11 of the UDP payload)."""
    return f"meta l4proto udp @th,128,32 {ssrc:#x}"

"""The test side of ``relay_host.py`` (the in-process relay in a namespace) and of
``rtp_peer.py`` (RTP phones in namespaces): start, send commands, read JSON answers, all
bounded in time."""

from __future__ import annotations

import json
import selectors
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from sipswitch.sdp import SessionDescription, parse

from .topology import HERE, NatTopology

ANSWER_TIMEOUT = 10.0


@dataclass
class RelayHost:
    process: subprocess.Popen[str]

    @classmethod
    def start(cls, topology: NatTopology, ns: str, ports: str = "30000-30999") -> RelayHost:
        process = subprocess.Popen(
            topology.python(ns, HERE / "relay_host.py", "--ports", ports),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        host = cls(process)
        try:
            ready = host._read()
        except BaseException:
            host.stop()
            raise
        assert ready == {"ready": True}, ready
        return host

    def _read(self) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if not selector.select(ANSWER_TIMEOUT):
                raise TimeoutError(f"relay host gave no answer in {ANSWER_TIMEOUT} s")
        line = stdout.readline()
        if not line:
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise RuntimeError(f"relay host exited: {stderr[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"relay host: {answer['error']}")
        return answer

    def relay(
        self, op: str, call_id: str, leg: str, sdp: str, peer_host: str, advertise: str
    ) -> SessionDescription:
        answer = self.request(
            op, call_id=call_id, leg=leg, sdp=sdp, peer_host=peer_host, advertise=advertise
        )
        return parse(answer["sdp"])

    def stats(self, call_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = self.request("stats", call_id=call_id)["stats"]
        return stats

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired, AssertionError):
                self.process.kill()
                self.process.wait(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class RtpPeer:
    """A running ``rtp_peer.py``; ``result()`` waits for its JSON report."""

    def __init__(self, topology: NatTopology, ns: str, *args: str) -> None:
        self.process = subprocess.Popen(
            topology.python(ns, HERE / "rtp_peer.py", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(self, timeout: float = 30.0) -> dict[str, Any]:
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate(timeout=5)
            raise
        if self.process.returncode != 0 or not out.strip():
            raise RuntimeError(f"rtp peer failed ({self.process.returncode}): {err[-2000:]}")
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return report


def sdp_text(host: str, port: int) -> str:
    return (
        f"v=0\r\no=phone 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )


def wait_until(predicate: Any, timeout: float = 5.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())

"""A headless baresip (Debian's baresip-core) phone controlled over ctrl_tcp: netstring-framed
JSON commands, and the events (CALL_RINGING, CALL_ESTABLISHED, ...) it reports."""

from __future__ import annotations

import json
import math
import shutil
import socket
import struct
import subprocess
import time
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .ports import HOST, free_port, free_port_block

BARESIP = shutil.which("baresip") or "/usr/bin/baresip"
MODULE_PATH = "/usr/lib/baresip/modules"


def baresip_available() -> bool:
    return Path(BARESIP).exists() and Path(MODULE_PATH, "ctrl_tcp.so").exists()


def write_tone_wav(path: Path, seconds: float = 60.0, freq: float = 440.0) -> Path:
    """8 kHz mono 16-bit tone; long, since baresip hangs up when its audio file ends."""
    rate = 8000
    frames = bytearray()
    for i in range(int(rate * seconds)):
        sample = int(8000 * math.sin(2 * math.pi * freq * i / rate))
        frames += struct.pack("<h", sample)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return path


def _netstring(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


class Baresip:
    """One baresip process with its own config folder, SIP port and control port."""

    def __init__(
        self,
        workdir: Path,
        user: str,
        password: str,
        server_host: str,
        server_port: int,
        *,
        transport: str = "udp",
        audio_file: Path | None = None,
        answer_auto: bool = True,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.user = user
        self.sip_port = free_port()
        self.ctrl_port = free_port()
        self.dir = workdir / f"baresip-{user}-{self.sip_port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "baresip.log"
        rtp = free_port_block(20)
        audio = audio_file or write_tone_wav(self.dir / "tone.wav")
        (self.dir / "config").write_text(
            "\n".join(
                [
                    "poll_method epoll",
                    f"sip_listen {HOST}:{self.sip_port}",
                    f"net_interface {HOST}",
                    f"rtp_ports {rtp}-{rtp + 19}",
                    "audio_player alsa,null",
                    "audio_alert alsa,null",
                    f"audio_source aufile,{audio}",
                    f"module_path {MODULE_PATH}",
                    "module g711.so",
                    "module aufile.so",
                    "module alsa.so",
                    "module_app account.so",
                    "module_app menu.so",
                    "module_app ctrl_tcp.so",
                    f"ctrl_tcp_listen {HOST}:{self.ctrl_port}",
                    *extra_config,
                    "",
                ]
            )
        )
        answermode = "auto" if answer_auto else "manual"
        (self.dir / "accounts").write_text(
            f"<sip:{user}@{server_host}>;auth_user={user};auth_pass={password};"
            f'outbound="sip:{server_host}:{server_port};transport={transport}";'
            f"regint=600;answermode={answermode};audio_codecs=PCMU,PCMA;dtmfmode=rtpevent\n"
        )
        (self.dir / "contacts").write_text("")
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        self._token = 0

    def start(self, timeout_s: float = 10.0) -> Baresip:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [BARESIP, "-f", str(self.dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"baresip exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                self.sock = socket.create_connection((HOST, self.ctrl_port), timeout=1)
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"baresip control port did not open:\n{self.log_tail()}")

    def log_tail(self, limit: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def _read_one(self, timeout_s: float) -> dict[str, Any] | None:
        assert self.sock is not None
        deadline = time.monotonic() + timeout_s
        while True:
            colon = self._buffer.find(b":")
            if colon > 0:
                length = int(self._buffer[:colon])
                end = colon + 1 + length
                if len(self._buffer) > end:
                    payload = self._buffer[colon + 1 : end]
                    self._buffer = self._buffer[end + 1 :]
                    message: dict[str, Any] = json.loads(payload)
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError(f"baresip closed its control port:\n{self.log_tail()}")
            self._buffer += chunk

    def command(self, command: str, params: str = "", timeout_s: float = 10.0) -> dict[str, Any]:
        """Sends a command and returns its response (events that arrive meanwhile are kept)."""
        assert self.sock is not None
        self._token += 1
        token = str(self._token)
        body = {"command": command, "params": params, "token": token}
        self.sock.sendall(_netstring(json.dumps(body).encode()))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self._read_one(deadline - time.monotonic())
            if message is None:
                break
            if message.get("event"):
                self.events.append(message)
            elif message.get("response") and message.get("token") == token:
                return message
        raise TimeoutError(f"no response to {command!r} from baresip {self.user}")

    def wait_event(self, kind: str, timeout_s: float = 20.0) -> dict[str, Any]:
        """Returns the first event of ``kind`` (seen before or arriving within the timeout)."""
        for event in self.events:
            if event.get("type") == kind:
                return event
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self._read_one(deadline - time.monotonic())
            if message is None:
                break
            if message.get("event"):
                self.events.append(message)
                if message.get("type") == kind:
                    return message
        seen = [e.get("type") for e in self.events]
        raise TimeoutError(
            f"baresip {self.user}: no {kind} within {timeout_s} s (seen {seen}):\n{self.log_tail()}"
        )

    def wait_registered(self, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if any(e.get("type") == "REGISTER_OK" for e in self.events):
                return
            info = self.command("reginfo")
            last = str(info.get("data", ""))
            if "OK" in last:
                return
            time.sleep(0.3)
        raise TimeoutError(f"baresip {self.user} did not register: {last}\n{self.log_tail()}")

    def stop(self) -> None:
        if self.sock is not None:
            try:
                self.command("quit", timeout_s=2)
            except (OSError, TimeoutError):
                pass
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            self.proc = None

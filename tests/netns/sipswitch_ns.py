"""The sipswitch server and SIPp phones inside the namespaces of a :class:`NatTopology`: the
black-box harness's server and SIPp runner, started through ``ip netns exec`` on the
namespace's addresses instead of 127.0.0.1."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from sipswitch.media.rtpengine import RtpEngineDaemon
from tests.blackbox.harness import ServerError, SipswitchServer, sipswitch_command
from tests.blackbox.sipp import Sipp

from .topology import HERE, NatTopology

SIP_PORT = 5060  # the namespace is the server's own: the standard port is free
RTP_PORTS = (30000, 30999)
RTPENGINE_NG = ("127.0.0.1", 2223)
READY_TIMEOUT_S = 20.0


class NamespaceServer(SipswitchServer):
    """``sipswitch serve`` in the topology's server namespace, listening on its local and its
    external address, with ``[nat]`` naming both and the LAN as the local network. The
    test networks are allowed in ``[security]``, so bans and rate limits stay out of the way."""

    def __init__(
        self, workdir: Path, topology: NatTopology, *, extra_config: str = "", **options: Any
    ) -> None:
        self.topology = topology
        super().__init__(workdir, extra_config=extra_config, name="sipswitch-ns", **options)

    def _write_config(self) -> None:
        nat = self.topology
        self.host, self.port = nat.server_local, SIP_PORT
        lan_net = nat.phone.rsplit(".", 2)[0] + ".0.0/16"  # 10.200.0.0/16: LAN and the NAT
        wan_net = nat.wan_peer.rsplit(".", 1)[0] + ".0/24"
        self.config_path.write_text(
            "[sip]\n"
            f'listen = ["{nat.server_local}", "{nat.server_external}"]\n'
            f"udp_port = {SIP_PORT}\n"
            f"tcp_port = {SIP_PORT}\n"
            'domain = ""\n'
            'realm = "sipswitch"\n'
            "\n[registrar]\n"
            "min_expires = 60\n"
            "max_expires = 3600\n"
            f"max_contacts = {self.max_contacts}\n"
            "\n[calls]\n"
            f"ring_timeout = {float(self.ring_timeout)!r}\n"
            "\n[media]\n"
            f"rtp_port_min = {RTP_PORTS[0]}\n"
            f"rtp_port_max = {RTP_PORTS[1]}\n"
            "\n[nat]\n"
            f'local_address = "{nat.server_local}"\n'
            f'external_address = "{nat.server_external}"\n'
            f'local_networks = ["{lan_net}"]\n'
            "\n[security]\n"
            f'allow = ["127.0.0.0/8", "{lan_net}", "{wan_net}"]\n'
            "\n[database]\n"
            'url = ""\n' + (("\n" + self.extra_config + "\n") if self.extra_config else "")
        )

    def _start_once(self) -> SipswitchServer:
        if self.running:
            raise ServerError("already running")
        cmd = [
            *sipswitch_command(), "serve",
            "--config", str(self.config_path), "--data", str(self.data_dir),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start in {self.topology.server}: {' '.join(cmd)}\n".encode())
            log.flush()
            # ip netns exec runs the command in its own process: the pid is the server's.
            self.proc = subprocess.Popen(
                self.topology.command(self.topology.server, *cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Both addresses answer OPTIONS with 200: the local one from the server namespace,
        the external one from the WAN."""
        nat = self.topology
        for ns, source, address in (
            (nat.server, nat.server_local, nat.server_local),
            (nat.wan, nat.wan_peer, nat.server_external),
        ):
            ping = subprocess.run(
                nat.python(ns, HERE / "sip_ping.py", "--bind", source,
                           "--to", f"{address}:{self.port}", "--wait", str(timeout_s)),
                capture_output=True, text=True, timeout=timeout_s + 10,
            )  # fmt: skip
            if ping.returncode != 0:
                running = self.running
                self.kill9()
                raise ServerError(
                    f"sipswitch in {nat.server} did not answer OPTIONS on {address} with 200 "
                    f"within {timeout_s} s (running: {running}):\n{ping.stderr}"
                    f"\n{self.log_tail()}"
                )


def sipp_in(
    topology: NatTopology,
    ns: str,
    address: str,
    scenario: str | Path,
    remote: str | None,
    workdir: Path,
    **options: Any,
) -> Sipp:
    """A :class:`Sipp` run (not started) inside namespace ``ns`` on ``address``."""
    sipp = Sipp(scenario, remote, workdir, **options)
    command = list(sipp.command)
    command[command.index("-i") + 1] = address
    sipp.command = topology.command(ns, *command)
    return sipp


def wait_bound(sipp: Sipp, timeout_s: float = 5.0) -> Sipp:
    """Blocks until SIPp holds its SIP port. Read from the process's own view of UDP sockets
    (``/proc/PID/net/udp`` is that of the namespace it runs in)."""
    assert sipp.proc is not None
    wanted = f":{sipp.local_port:04X}"  # local_address column: HEXIP:HEXPORT
    table = Path(f"/proc/{sipp.proc.pid}/net/udp")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sipp.proc.poll() is not None:
            raise RuntimeError(
                f"sipp exited early ({sipp.proc.returncode}):\n{sipp.stop().describe()}"
            )
        try:
            rows = [line.split() for line in table.read_text().splitlines()[1:]]
        except OSError:
            rows = []
        if any(len(row) > 1 and row[1].endswith(wanted) for row in rows):
            return sipp
        time.sleep(0.05)
    raise TimeoutError(f"sipp did not bind port {sipp.local_port} in {timeout_s} s")


class RtpEngineProcess:
    """An rtpengine daemon (userspace forwarding, no configuration file) run for a test:
    ``interfaces`` as rtpengine's ``--interface`` values, ``ports`` its RTP range, ``ng`` its
    control address; in namespace ``ns`` of ``topology`` when given. ``relay_config`` is the
    ``[relay]`` section pointing a server at it."""

    def __init__(
        self,
        interfaces: tuple[str, ...],
        ports: tuple[int, int],
        ng: tuple[str, int],
        log_path: Path,
        *,
        topology: NatTopology | None = None,
        ns: str = "",
    ) -> None:
        self.daemon = RtpEngineDaemon(
            interfaces=interfaces,
            port_min=ports[0],
            port_max=ports[1],
            ng_host=ng[0],
            ng_port=ng[1],
            log_path=log_path,
        )
        self.log_path = log_path
        command = self.daemon.command()
        if topology is not None:
            command = topology.command(ns, *command)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + self.daemon.startup_timeout
        while "Startup complete" not in self.log_tail():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rtpengine did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    @classmethod
    def beside(cls, topology: NatTopology, log_path: Path) -> RtpEngineProcess:
        """In the server namespace: an interface on each of the server's addresses
        (``internal`` and ``external``), ports ``RTP_PORTS``, control on its loopback."""
        return cls(
            (f"internal/{topology.server_local}", f"external/{topology.server_external}"),
            RTP_PORTS,
            RTPENGINE_NG,
            log_path,
            topology=topology,
            ns=topology.server,
        )

    @property
    def relay_config(self) -> str:
        host, port = self.daemon.ng_address
        names = {
            address: name
            for name, _, address in (item.partition("/") for item in self.daemon.interfaces)
            if address
        }
        mapping = ", ".join(f'"{address}" = "{name}"' for address, name in names.items())
        return (
            f'[relay]\nengine = "rtpengine"\nrtpengine = "{host}:{port}"\n'
            f"rtpengine_interfaces = {{ {mapping} }}\n"
        )

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

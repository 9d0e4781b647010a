"""SIP over TLS against the running server: protocol versions and suites checked on the wire with
``openssl s_client``, SIPp registering and calling over TLS, baresip phones calling each other
over TLS (each reached over its own connection), and a certificate reload on SIGHUP that leaves
an established connection working."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .baresip import Baresip, baresip_available, write_tone_wav
from .conftest import ServerFactory, UasFactory
from .harness import SipswitchServer, server_missing
from .ports import HOST, free_port
from .sipp import SIPP, run_sipp

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
SOCAT = shutil.which("socat") or "/usr/bin/socat"


class TlsServer:
    def __init__(self, server: SipswitchServer, port: int) -> None:
        self.server = server
        self.port = port
        self.cert = server.data_dir / "tls" / "cert.pem"
        self.key = server.data_dir / "tls" / "key.pem"


def start_tls_server(factory: ServerFactory, extra: str = "", **options: object) -> TlsServer:
    """A server with ``[tls]`` on a free port and a certificate from ``sipswitch tls
    selfsigned`` for 127.0.0.1."""
    port = free_port()
    server = factory(start=False, extra_config=f"[tls]\nport = {port}\n{extra}", **options)
    done = server.cli("tls", "selfsigned", "--host", HOST)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "IP:127.0.0.1" in done.stdout, done.stdout
    server.start()
    return TlsServer(server, port)


def s_client(port: int, cafile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            OPENSSL, "s_client", "-connect", f"{HOST}:{port}", "-CAfile", str(cafile),
            "-verify_return_error", "-brief", *args,
        ],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )


def established(done: subprocess.CompletedProcess[str]) -> str | None:
    """The negotiated protocol, or None when the handshake failed."""
    text = done.stdout + done.stderr
    match = re.search(r"Protocol version:\s*(\S+)", text)
    if done.returncode != 0 or "CONNECTION ESTABLISHED" not in text or match is None:
        return None
    return match.group(1)


@pytest.fixture
def permissive_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A plain Python TLS server that accepts TLS 1.0 and any suite, with the same kind of
    certificate: proof that the openssl client here can offer what sipswitch must refuse."""
    from sipswitch.sip.transport.certs import write_self_signed

    cert, key = tmp_path / "control.pem", tmp_path / "control.key"
    write_self_signed(HOST, cert, key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.load_cert_chain(str(cert), str(key))
    listener = socket.create_server((HOST, 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, cert
    stop.set()
    thread.join(timeout=5)
    listener.close()


OLD = {"-tls1": "TLSv1", "-tls1_1": "TLSv1.1"}


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("flag", list(OLD))
def test_openssl_tls_1_0_and_1_1_are_refused(
    sipswitch_server: ServerFactory, permissive_server: tuple[int, Path], flag: str
) -> None:
    control_port, control_cert = permissive_server
    control = s_client(control_port, control_cert, flag, "-cipher", "DEFAULT:@SECLEVEL=0")
    assert established(control) == OLD[flag], control.stdout + control.stderr
    tls = start_tls_server(sipswitch_server)
    done = s_client(tls.port, tls.cert, flag, "-cipher", "DEFAULT:@SECLEVEL=0")
    assert established(done) is None, done.stdout + done.stderr


@pytest.mark.parametrize(("flag", "protocol"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_openssl_tls_1_2_and_1_3_are_served(
    sipswitch_server: ServerFactory, flag: str, protocol: str
) -> None:
    tls = start_tls_server(sipswitch_server)
    done = s_client(tls.port, tls.cert, flag)
    assert established(done) == protocol, done.stdout + done.stderr
    suite = re.search(r"Ciphersuite:\s*(\S+)", done.stdout + done.stderr)
    assert suite is not None and ("GCM" in suite.group(1) or "CHACHA20" in suite.group(1))


@pytest.mark.parametrize(
    "weak", ["AES128-SHA", "ECDHE-RSA-AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA256"]
)
def test_openssl_weak_suites_are_refused(
    sipswitch_server: ServerFactory, permissive_server: tuple[int, Path], weak: str
) -> None:
    control_port, control_cert = permissive_server
    control = s_client(control_port, control_cert, "-tls1_2", "-cipher", f"{weak}:@SECLEVEL=0")
    assert established(control) == "TLSv1.2", control.stdout + control.stderr
    tls = start_tls_server(sipswitch_server)
    done = s_client(tls.port, tls.cert, "-tls1_2", "-cipher", f"{weak}:@SECLEVEL=0")
    assert established(done) is None, done.stdout + done.stderr
    good = s_client(tls.port, tls.cert, "-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305")
    assert established(good) == "TLSv1.2", good.stdout + good.stderr


def sipp_has_tls() -> bool:
    done = subprocess.run(
        [SIPP, "-t", "l1", "-sn", "uac", f"{HOST}:9", "-m", "1", "-timeout", "1"],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )
    return "compile SIPp with OpenSSL" not in done.stdout + done.stderr


@pytest.fixture
def tls_tunnel(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def open_tunnel(tls: TlsServer, started: list[subprocess.Popen[bytes]]) -> int:
    """A socat relay from a local TCP port to the server's TLS port (verifying the server's
    certificate): for a SIPp built without TLS, as Debian's is."""
    if not Path(SOCAT).exists():
        pytest.fail("socat is not installed: run `make test-deps`")
    port = free_port()
    proc = subprocess.Popen(
        [
            SOCAT,
            f"TCP-LISTEN:{port},bind={HOST},reuseaddr,fork",
            f"OPENSSL:{HOST}:{tls.port},cafile={tls.cert},verify=1,commonname={HOST}",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    started.append(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex((HOST, port)) == 0:
                return port
        time.sleep(0.05)
    pytest.fail("socat did not listen")


def sipp_tls_target(
    tls: TlsServer, tunnel: list[subprocess.Popen[bytes]]
) -> tuple[str, str, list[str]]:
    """(remote, transport, extra options) for SIPp to reach the TLS server: over TLS when this
    SIPp has it, else over TCP through a socat tunnel that speaks TLS to the server."""
    if sipp_has_tls():
        return f"{HOST}:{tls.port}", "tls", ["-tls_cert", str(tls.cert), "-tls_key", str(tls.key)]
    return f"{HOST}:{open_tunnel(tls, tunnel)}", "tcp", []


def test_sipp_registers_and_calls_over_tls(
    sipswitch_server: ServerFactory,
    sipp_uas: UasFactory,
    tls_tunnel: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    tls = start_tls_server(sipswitch_server)
    server = tls.server
    remote, transport, extra = sipp_tls_target(tls, tls_tunnel)
    registered = run_sipp(
        "register", remote, tmp_path, transport=transport, users=[("202", server.users["202"])],
        timeout_s=20, extra=extra, name="register-tls",
    )
    assert registered.ok, registered.describe()
    assert "listening on tls:" in server.log_text()

    callee = sipp_uas(server, "201", "uas_answer")  # over UDP
    caller = run_sipp(
        "uac_call", remote, tmp_path, transport=transport, service="201",
        users=[("200", server.users["200"])], timeout_s=60, call_length_ms=300, extra=extra,
        name="uac-tls",
    )
    assert caller.ok, caller.describe()
    answered = callee.wait(timeout_s=30)
    assert answered.ok and answered.successful == 1, answered.describe()
    # The callee saw the server's leg, not the caller's TLS connection.
    assert "TLS" not in answered.workdir.joinpath("messages.log").read_text(errors="replace")


def test_tls_calls_through_worker_processes(
    sipswitch_server: ServerFactory,
    sipp_uas: UasFactory,
    tls_tunnel: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """With [sip] workers = 2 the primary holds the TLS connections: the calls a worker owns
    reach it through the primary, and its answers go back over the caller's connection."""
    calls = 12  # each call's owner is a hash of its Call-ID: all twelve in one process is 1/4096
    tls = start_tls_server(sipswitch_server, workers=2)
    server = tls.server
    remote, transport, extra = sipp_tls_target(tls, tls_tunnel)
    callee = sipp_uas(server, "201", "uas_answer", calls=calls)  # over UDP
    caller = run_sipp(
        "uac_call", remote, tmp_path, transport=transport, service="201", calls=calls,
        users=[("200", server.users["200"])], timeout_s=60, extra=extra, name="uac-tls-workers",
    )
    assert caller.ok and caller.successful == calls, caller.describe()
    answered = callee.wait(timeout_s=30)
    assert answered.ok and answered.successful == calls, answered.describe()
    starts = [line for line in server.log_text().splitlines() if "call start" in line]
    assert len(starts) == calls
    assert any("[worker 1]" in line for line in starts), starts
    assert any("[worker" not in line for line in starts), starts


@pytest.fixture
def phones() -> Iterator[list[Baresip]]:
    if not baresip_available():
        pytest.fail("baresip (baresip-core) is not installed: run `make test-deps`")
    started: list[Baresip] = []
    yield started
    for phone in started:
        phone.stop()


def test_baresip_phones_call_each_other_over_tls(
    sipswitch_server: ServerFactory, phones: list[Baresip], tmp_path: Path
) -> None:
    # baresip 1.0 gives up on SHA-256 challenges (see test_baresip.py).
    tls = start_tls_server(sipswitch_server, auth_algorithms=["MD5"])
    server = tls.server
    tone = write_tone_wav(tmp_path / "tone.wav", seconds=60)
    caller, callee = (
        Baresip(tmp_path, user, server.users[user], server.host, tls.port, transport="tls",
                audio_file=tone)
        for user in ("200", "201")
    )
    for phone in (caller, callee):
        with (phone.dir / "config").open("a") as config:
            config.write(f"sip_cafile {tls.cert}\n")
        phones.append(phone.start())
    for phone in (caller, callee):
        phone.wait_registered()
    # The callee has no TLS listener of its own: the INVITE can only reach it over the
    # connection it registered on.
    reply = caller.command("dial", f"sip:201@{server.host}")
    assert reply.get("ok"), reply
    caller.wait_event("CALL_ESTABLISHED", timeout_s=20)
    incoming = callee.wait_event("CALL_ESTABLISHED", timeout_s=20)
    assert incoming.get("direction") == "incoming", incoming
    assert caller.command("hangup").get("ok")
    callee.wait_event("CALL_CLOSED", timeout_s=10)


def register_over(tls_socket: ssl.SSLSocket, port: int, call_id: str) -> bytes:
    """An OPTIONS over an open TLS connection; returns the status line of the answer."""
    lport = tls_socket.getsockname()[1]
    tls_socket.sendall(
        (
            f"OPTIONS sip:{HOST}:{port};transport=tls SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS {HOST}:{lport};branch=z9hG4bK-{call_id}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sips:probe@{HOST}>;tag=t{call_id}\r\n"
            f"To: <sips:{HOST}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls_socket.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def fingerprint(tls: TlsServer) -> str:
    done = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"{HOST}:{tls.port}", "-showcerts"],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", done.stdout, re.S)
    assert pem is not None, done.stdout + done.stderr
    return ssl.PEM_cert_to_DER_cert(pem.group(0)).hex()


def test_sighup_reloads_the_certificate_and_connections_survive(
    sipswitch_server: ServerFactory,
) -> None:
    tls = start_tls_server(sipswitch_server)
    server = tls.server
    before = fingerprint(tls)
    context = ssl.create_default_context(cafile=str(tls.cert))
    with socket.create_connection((HOST, tls.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as kept:
            assert register_over(kept, tls.port, "before") == b"SIP/2.0 200 OK"
            done = server.cli("tls", "selfsigned", "--host", HOST, "--force")
            assert done.returncode == 0, done.stderr
            assert server.pid is not None
            server.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            deadline = time.monotonic() + 10
            while "TLS certificate reloaded" not in server.log_text():
                assert time.monotonic() < deadline, server.log_tail()
                time.sleep(0.05)
            after = fingerprint(tls)
            assert after != before
            # The connection made with the old certificate still works.
            assert register_over(kept, tls.port, "after") == b"SIP/2.0 200 OK"
    assert server.running

"""Hardening of the running PBX over the loop transport: answers that do not reveal which
extensions exist, bans after repeated wrong passwords, 403 for credentials of another user,
nonce replay, scanner drops, the overload answer and the digest algorithm order."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from sipswitch.config.settings import load_settings
from sipswitch.pbx.server import SipServer
from sipswitch.sip.auth import DigestChallenge, build_authorization, choose_challenge
from sipswitch.sip.dialog import new_call_id
from sipswitch.sip.message import Request, Response
from sipswitch.sip.transaction import new_branch, new_tag
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.loop import LoopTransport

from .conftest import PASSWORD, SERVER, Lab, LoopTransports
from .phone import Phone, _Collector

NO_ANSWER_WAIT = 1.2  # seconds: long enough for several loop-network round trips


class ConfiguredLab(Lab):
    """A Lab whose server reads extra settings (TOML text appended to the file)."""

    def __init__(self, tmp_path: Path, extra: str) -> None:
        super().__init__(tmp_path)
        self.extra = extra
        self._next_host = 10

    async def start_server(self, extensions: tuple[str, ...] = ("200", "201", "202")) -> SipServer:
        config = self.tmp_path / "sipswitch.toml"
        config.write_text(f"[calls]\nring_timeout = {self.ring_timeout}\n{self.extra}\n")
        settings = load_settings(config, self.tmp_path / "data")
        server = SipServer(
            settings,
            out=self.output.append,
            transports=LoopTransports(self.network, SERVER),  # type: ignore[arg-type]
        )
        await server.start()
        for number in extensions:
            await server.database.extensions.add(number, PASSWORD, settings.sip.realm)
        assert server.directory is not None
        await server.directory.load()
        self.server = server
        return server

    def phone_at(self, host: str, number: str, password: str = PASSWORD) -> Phone:
        self._next_port += 1
        address = Address("udp", host, self._next_port)
        transport = LoopTransport(self.network, address)
        phone = Phone(transport, self.clock, address, number, password, SERVER)
        transport.attach(phone.layer)
        return phone


SECURITY = '[security]\nallow = []\n'


async def started(tmp_path: Path, extra: str = SECURITY) -> ConfiguredLab:
    lab = ConfiguredLab(tmp_path, extra)
    await lab.start_server()
    return lab


async def send_once(phone: Phone, request: Request, wait: float = 5.0) -> Response | None:
    """The final response to ``request``, or None when nothing came back within ``wait``."""
    collector = _Collector()
    phone.sent.append(phone.layer.send_request(request, phone.server, collector))
    try:
        while True:
            response = await asyncio.wait_for(collector.responses.get(), wait)
            if response.status >= 200:
                return response
    except TimeoutError:
        return None


def fresh(phone: Phone, method: str, target: str, call_id: str | None = None) -> Request:
    """A request from ``phone`` to ``target`` (a user at the server)."""
    uri = f"sip:{target}@{phone.server.host}" if target else f"sip:{phone.server.host}"
    to = f"<sip:{target or phone.number}@{phone.server.host}>"
    request = phone._base(method, uri, to, call_id or new_call_id(phone.address.host), new_tag())
    if method == "REGISTER":
        request.headers.add("Expires", "600")
    if method == "SUBSCRIBE":
        request.headers.add("Event", "presence")
    return request


def with_credentials(
    phone: Phone,
    request: Request,
    challenge: DigestChallenge,
    username: str,
    password: str,
    proxy: bool,
) -> Request:
    retry = Request(request.method, request.uri, request.headers.copy(), request.body)
    phone._cseq += 1
    retry.headers.set("CSeq", f"{phone._cseq} {request.method}")
    retry.headers.set(
        "Via",
        f"SIP/2.0/UDP {phone.address.host}:{phone.address.port};branch={new_branch()};rport",
    )
    retry.headers.set(
        "Proxy-Authorization" if proxy else "Authorization",
        build_authorization(challenge, request.method, str(request.uri), username, password),
    )
    return retry


def shape(response: Response) -> tuple[object, ...]:
    """What a prober can compare: status, reason, header names, challenge form (nonces and
    tags masked)."""
    challenges = [
        re.sub(r'nonce="[^"]*"', 'nonce="N"', value)
        for name in ("WWW-Authenticate", "Proxy-Authenticate")
        for value in response.headers.get_all(name)
    ]
    return (response.status, response.reason, [n for n, _ in response.headers], challenges)


@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "OPTIONS", "SUBSCRIBE", "MESSAGE"])
async def test_unknown_user_no_credentials_and_wrong_password_look_alike(
    tmp_path: Path, method: str
) -> None:
    lab = await started(tmp_path, SECURITY + "ban_failures = 1000\n")
    try:
        proxy = method == "INVITE"
        shapes = []
        for number, password, answer in (
            ("999", "whatever", True),  # an extension that does not exist
            ("200", PASSWORD, False),  # exists, no credentials
            ("200", "wrong-password", True),  # exists, wrong password
        ):
            phone = lab.phone_at("192.0.2.20", number, password)
            target = "201" if method == "INVITE" else ("" if method == "REGISTER" else number)
            request = fresh(phone, method, target)
            response = await send_once(phone, request)
            assert response is not None
            if answer and response.status in (401, 407):
                header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
                challenge = choose_challenge(response.headers.get_all(header))
                assert challenge is not None
                retry = with_credentials(phone, request, challenge, number, password, proxy)
                response = await send_once(phone, retry)
                assert response is not None
            shapes.append(shape(response))
        assert shapes[0] == shapes[1] == shapes[2], shapes
        if method in ("REGISTER", "INVITE"):
            assert shapes[0][0] == (407 if proxy else 401)
    finally:
        await lab.stop_server()


async def test_repeated_wrong_passwords_ban_the_source_and_only_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sipswitch.security")
    lab = await started(tmp_path)
    try:
        guesser = lab.phone_at("192.0.2.66", "200", "guess")
        for _ in range(5):
            response = await guesser.register()
            assert response.status == 401
        # Banned: not even a challenge any more, for any request.
        assert await send_once(guesser, fresh(guesser, "OPTIONS", ""), NO_ANSWER_WAIT) is None
        # The real phone at another address registers as usual.
        phone = lab.phone_at("192.0.2.67", "200")
        assert (await phone.register()).status == 200
        bans = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ban ")]
        assert bans == ["ban 192.0.2.66: 5 failed authentications within 60 s; ignored for 300 s"]
    finally:
        await lab.stop_server()


async def test_requests_without_credentials_and_stale_nonces_are_not_failures(
    tmp_path: Path,
) -> None:
    lab = await started(tmp_path, SECURITY + "ban_failures = 2\n")
    try:
        server = lab.server
        assert server is not None and server.security is not None
        phone = lab.phone_at("192.0.2.30", "200")
        for _ in range(5):  # challenged, never counted
            response = await send_once(phone, fresh(phone, "REGISTER", ""))
            assert response is not None and response.status == 401
        # Credentials for a nonce this server never issued (as after a restart): no guess.
        foreign = DigestChallenge(realm="sipswitch", nonce="x" * 54, qop=("auth",))
        for _ in range(3):
            request = fresh(phone, "REGISTER", "")
            response = await send_once(
                phone, with_credentials(phone, request, foreign, "200", PASSWORD, False)
            )
            assert response is not None and response.status == 401
        assert server.security.banned_count == 0
        assert (await phone.register()).status == 200
    finally:
        await lab.stop_server()


async def test_allow_listed_source_is_never_banned(tmp_path: Path) -> None:
    lab = await started(tmp_path, '[security]\nallow = ["192.0.2.0/28"]\nban_failures = 2\n')
    try:
        office = lab.phone_at("192.0.2.5", "200", "wrong")
        for _ in range(4):
            assert (await office.register()).status == 401
        assert (await lab.phone_at("192.0.2.5", "200").register()).status == 200
    finally:
        await lab.stop_server()


async def test_credentials_of_another_extension_get_403(tmp_path: Path) -> None:
    lab = await started(tmp_path)
    try:
        phone = lab.phone_at("192.0.2.40", "200")
        # REGISTER for 200 with 201's valid credentials.
        request = fresh(phone, "REGISTER", "")
        challenge = await send_once(phone, request)
        assert challenge is not None and challenge.status == 401
        parsed = choose_challenge(challenge.headers.get_all("WWW-Authenticate"))
        assert parsed is not None
        response = await send_once(
            phone, with_credentials(phone, request, parsed, "201", PASSWORD, False)
        )
        assert response is not None and response.status == 403
        assert lab.server is not None and lab.server.location is not None
        assert lab.server.location.lookup("200") == []

        # INVITE from 200 with 201's valid credentials.
        callee = lab.phone_at("192.0.2.41", "202")
        assert (await callee.register()).status == 200
        invite = phone.invite("202")
        challenge = await send_once(phone, invite)
        assert challenge is not None and challenge.status == 407
        parsed = choose_challenge(challenge.headers.get_all("Proxy-Authenticate"))
        assert parsed is not None
        response = await send_once(
            phone, with_credentials(phone, invite, parsed, "201", PASSWORD, True)
        )
        assert response is not None and response.status == 403
        assert callee.incoming.empty()
        # The user's own credentials still work.
        assert (await phone.register()).status == 200
    finally:
        await lab.stop_server()


async def test_replayed_authorization_is_refused(tmp_path: Path) -> None:
    lab = await started(tmp_path)
    try:
        phone = lab.phone_at("192.0.2.50", "200")
        request = fresh(phone, "REGISTER", "")
        challenge = await send_once(phone, request)
        assert challenge is not None
        parsed = choose_challenge(challenge.headers.get_all("WWW-Authenticate"))
        assert parsed is not None
        first = with_credentials(phone, request, parsed, "200", PASSWORD, False)
        response = await send_once(phone, first)
        assert response is not None and response.status == 200
        # The same Authorization (same nonce-count) in a new transaction: a replay.
        replay = Request("REGISTER", first.uri, first.headers.copy())
        phone._cseq += 1
        replay.headers.set("CSeq", f"{phone._cseq} REGISTER")
        replay.headers.set(
            "Via",
            f"SIP/2.0/UDP {phone.address.host}:{phone.address.port};branch={new_branch()}",
        )
        response = await send_once(phone, replay)
        assert response is not None and response.status == 401
    finally:
        await lab.stop_server()


async def test_scanner_user_agent_gets_no_answer(tmp_path: Path) -> None:
    lab = await started(tmp_path)
    try:
        phone = lab.phone_at("192.0.2.60", "200")
        scan = fresh(phone, "OPTIONS", "100")
        scan.headers.add("User-Agent", "friendly-scanner")
        assert await send_once(phone, scan, NO_ANSWER_WAIT) is None
        plain = fresh(phone, "OPTIONS", "100")
        plain.headers.add("User-Agent", "Linphone/5.2")
        response = await send_once(phone, plain)
        assert response is not None and response.status == 200
    finally:
        await lab.stop_server()


async def test_overload_answers_503_with_retry_after(tmp_path: Path) -> None:
    lab = await started(tmp_path, SECURITY + "overload_pending = 2\noverload_retry_after = 7\n")
    try:
        server = lab.server
        assert server is not None and server.core is not None
        phone = lab.phone_at("192.0.2.70", "200")
        assert (await phone.register()).status == 200
        # Two requests in progress that do not finish (as with a stalled database).
        stall = asyncio.Event()
        server.core.spawn(stall.wait())
        server.core.spawn(stall.wait())
        response = await send_once(phone, fresh(phone, "REGISTER", ""))
        assert response is not None and response.status == 503
        assert response.headers.get("Retry-After") == "7"
        stall.set()
        await asyncio.sleep(0.01)
        assert (await phone.register()).status == 200
    finally:
        await lab.stop_server()


@pytest.mark.parametrize(
    ("algorithms", "offered"),
    [
        ('["SHA-256", "MD5"]', ["SHA-256", "MD5"]),
        ('["SHA-256"]', ["SHA-256"]),
        ('["MD5", "SHA-256"]', ["MD5", "SHA-256"]),  # the default
    ],
)
async def test_digest_algorithm_order_and_md5_off(
    tmp_path: Path, algorithms: str, offered: list[str]
) -> None:
    lab = await started(tmp_path, f"[sip]\nauth_algorithms = {algorithms}\n{SECURITY}")
    try:
        phone = lab.phone_at("192.0.2.80", "200")
        request = fresh(phone, "REGISTER", "")
        response = await send_once(phone, request)
        assert response is not None
        values = response.headers.get_all("WWW-Authenticate")
        assert [re.search(r"algorithm=([\w-]+)", v).group(1) for v in values] == offered  # type: ignore[union-attr]
        # The phone picks SHA-256 whenever it is offered, and registers.
        assert (await phone.register()).status == 200
        if "MD5" not in offered:
            # An MD5 answer to a SHA-256-only server fails, even with the right password.
            parsed = choose_challenge(values)
            assert parsed is not None
            md5 = DigestChallenge(parsed.realm, parsed.nonce, "MD5", parsed.qop, parsed.opaque)
            request = fresh(phone, "REGISTER", "")
            answer = await send_once(
                phone, with_credentials(phone, request, md5, "200", PASSWORD, False)
            )
            assert answer is not None and answer.status == 401
    finally:
        await lab.stop_server()

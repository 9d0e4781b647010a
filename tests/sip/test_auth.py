"""Tests for SIP digest authentication: vectors, round trips, replay, expiry, parsing."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipswitch.sip.auth import (
    MAX_HEADER_LENGTH,
    AuthResult,
    DigestChallenge,
    DigestChallenger,
    DigestCredentials,
    build_authorization,
    choose_challenge,
    compute_ha1,
    compute_response,
    parse_challenge,
    parse_credentials,
)

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "pbx.example.com"
URI = "sip:pbx.example.com"


class VirtualClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def make_challenger(clock: VirtualClock, **kwargs: object) -> DigestChallenger:
    return DigestChallenger(SECRET, REALM, lambda: clock.now, **kwargs)  # type: ignore[arg-type]


def answer(
    challenger: DigestChallenger,
    algorithm: str = "SHA-256",
    password: str = "secret",
    username: str = "alice",
    nc: int = 1,
    method: str = "REGISTER",
    challenge: DigestChallenge | None = None,
) -> DigestCredentials:
    """The credentials a client would send for ``challenger``'s challenge."""
    if challenge is None:
        challenge = choose_challenge(
            v for v in challenger.challenge_values() if f"algorithm={algorithm}," in v
        )
    assert challenge is not None
    value = build_authorization(challenge, method, URI, username, password, nc=nc)
    creds = parse_credentials(value)
    assert creds is not None
    return creds


def ha1_of(algorithm: str, username: str = "alice", password: str = "secret") -> str:
    return compute_ha1(username, REALM, password, algorithm)


# --- known vectors ------------------------------------------------------------------------------

RFC7616_CHALLENGE = (
    'Digest\r\n    realm="http-auth@example.org",\r\n    qop="auth, auth-int",\r\n'
    "    algorithm=SHA-256,\r\n"
    '    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\r\n'
    '    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def rfc7616_authorization(algorithm: str) -> str:
    return (
        'Digest username="Mufasa",\r\n    realm="http-auth@example.org",\r\n'
        f'    uri="/dir/index.html",\r\n    algorithm={algorithm},\r\n'
        '    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\r\n'
        f'    nc=00000001,\r\n    cnonce="{RFC7616_CNONCE}",\r\n    qop=auth,\r\n'
        f'    response="{RFC7616_RESPONSES[algorithm]}",\r\n'
        '    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_vector_parses_and_computes(algorithm: str) -> None:
    creds = parse_credentials(rfc7616_authorization(algorithm))
    assert creds is not None
    assert (creds.username, creds.realm, creds.uri) == (
        "Mufasa",
        "http-auth@example.org",
        "/dir/index.html",
    )
    assert (creds.algorithm, creds.nc, creds.qop, creds.cnonce) == (
        algorithm,
        "00000001",
        "auth",
        RFC7616_CNONCE,
    )
    ha1 = compute_ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    expected = compute_response(
        ha1,
        algorithm,
        "GET",
        creds.uri,
        creds.nonce,
        qop=creds.qop,
        nc=creds.nc,
        cnonce=creds.cnonce,
    )
    assert expected == creds.response == RFC7616_RESPONSES[algorithm]


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_vector_built_by_client(algorithm: str) -> None:
    parsed = parse_challenge(RFC7616_CHALLENGE)
    assert parsed is not None
    assert parsed.qop == ("auth", "auth-int")
    assert parsed.algorithm == "SHA-256"
    assert parsed.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
    challenge = DigestChallenge(
        realm=parsed.realm,
        nonce=parsed.nonce,
        algorithm=algorithm,
        qop=parsed.qop,
        opaque=parsed.opaque,
    )
    value = build_authorization(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=RFC7616_CNONCE
    )
    creds = parse_credentials(value)
    assert creds is not None
    assert creds.response == RFC7616_RESPONSES[algorithm]
    assert creds.opaque == parsed.opaque
    assert (creds.qop, creds.nc) == ("auth", "00000001")


def test_rfc2617_vector() -> None:
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    response = compute_response(
        ha1,
        "MD5",
        "GET",
        "/dir/index.html",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_compute_ha1_algorithms() -> None:
    assert compute_ha1("a", "r", "p", "md5") == compute_ha1("a", "r", "p", "MD5")
    assert len(compute_ha1("a", "r", "p", "MD5")) == 32
    assert len(compute_ha1("a", "r", "p", "SHA-256")) == 64
    assert compute_ha1("a", "r", "p", "SHA-256-sess") == compute_ha1("a", "r", "p", "SHA-256")
    with pytest.raises(ValueError):
        compute_ha1("a", "r", "p", "SHA-1")


# --- challenges ---------------------------------------------------------------------------------


def test_challenge_values_one_per_algorithm_in_configured_order(clock: VirtualClock) -> None:
    assert make_challenger(clock, algorithms=("MD5", "SHA-256")).algorithms == ("MD5", "SHA-256")
    challenger = make_challenger(clock, algorithms=("SHA-256", "MD5"))
    values = challenger.challenge_values()
    assert len(values) == 2
    parsed = [parse_challenge(v) for v in values]
    assert [p.algorithm for p in parsed if p] == ["SHA-256", "MD5"]
    first, second = parsed
    assert first is not None and second is not None
    assert first.nonce == second.nonce
    assert first.opaque == second.opaque == challenger.opaque
    assert first.realm == REALM
    assert first.qop == ("auth",)
    assert not first.stale
    assert values[0].startswith(f'Digest realm="{REALM}", nonce="')
    assert values[0].endswith(', algorithm=SHA-256, qop="auth"')
    assert challenger.challenge_values()[0] != values[0], "each challenge has a fresh nonce"


def test_stale_challenge(clock: VirtualClock) -> None:
    for value in make_challenger(clock).challenge_values(stale=True):
        assert value.endswith(", stale=true")
        parsed = parse_challenge(value)
        assert parsed is not None and parsed.stale


def test_challenger_rejects_bad_configuration(clock: VirtualClock) -> None:
    with pytest.raises(ValueError):
        DigestChallenger(b"short", REALM, lambda: clock.now)
    with pytest.raises(ValueError):
        make_challenger(clock, algorithms=())
    with pytest.raises(ValueError):
        make_challenger(clock, algorithms=("SHA-1",))
    with pytest.raises(ValueError):
        make_challenger(clock, nonce_ttl=0)
    with pytest.raises(ValueError):
        make_challenger(clock, max_tracked_nonces=0)
    with pytest.raises(ValueError):
        DigestChallenger(SECRET, "bad\r\nrealm", lambda: clock.now)


# --- verification -------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_round_trip(clock: VirtualClock, algorithm: str) -> None:
    challenger = make_challenger(clock)
    creds = answer(challenger, algorithm)
    assert creds.algorithm == algorithm
    assert challenger.verify(creds, "REGISTER", ha1_of(algorithm)) is AuthResult.OK


@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256-sess"])
def test_round_trip_session_algorithms(clock: VirtualClock, algorithm: str) -> None:
    challenger = make_challenger(clock, algorithms=(algorithm,))
    creds = answer(challenger, algorithm)
    assert challenger.verify(creds, "REGISTER", ha1_of(algorithm)) is AuthResult.OK
    assert challenger.verify(creds, "REGISTER", ha1_of("MD5")) is AuthResult.FAILED


def test_client_prefers_sha256(clock: VirtualClock) -> None:
    challenger = make_challenger(clock, algorithms=("MD5", "SHA-256"))
    chosen = choose_challenge(reversed(challenger.challenge_values()))
    assert chosen is not None and chosen.algorithm == "SHA-256"
    unknown = 'Digest realm="r", nonce="n", algorithm=SHA-512-256, qop="auth"'
    md5 = 'Digest realm="r", nonce="n", qop="auth"'
    chosen = choose_challenge([unknown, "Basic realm=x", md5])
    assert chosen is not None and chosen.algorithm == "MD5"
    assert choose_challenge([unknown, "Basic realm=x"]) is None


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_wrong_password_fails(clock: VirtualClock, algorithm: str) -> None:
    challenger = make_challenger(clock)
    creds = answer(challenger, algorithm, password="guess")
    assert challenger.verify(creds, "REGISTER", ha1_of(algorithm)) is AuthResult.FAILED


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_unknown_user_fails_like_wrong_password(clock: VirtualClock, algorithm: str) -> None:
    challenger = make_challenger(clock)
    creds = answer(challenger, algorithm, username="mallory")
    assert challenger.verify(creds, "REGISTER", None) is AuthResult.FAILED
    # Even over an expired nonce: a guesser never learns a user exists from STALE.
    clock.now += 1000
    assert challenger.verify(creds, "REGISTER", None) is AuthResult.FAILED
    assert challenger.tracked_nonces == 0


def test_unknown_user_never_passes_even_if_the_stand_in_hash_matched(
    clock: VirtualClock,
) -> None:
    challenger = make_challenger(clock)
    creds = answer(challenger)
    challenger._dummy_ha1["SHA-256"] = ha1_of("SHA-256")
    assert challenger.verify(creds, "REGISTER", None) is AuthResult.FAILED
    assert challenger.verify(creds, "REGISTER", ha1_of("SHA-256")) is AuthResult.OK


def test_nonce_count_zero_fails_even_with_a_correct_digest(clock: VirtualClock) -> None:
    challenger = make_challenger(clock)
    creds = answer(challenger)
    ha1 = ha1_of("SHA-256")
    response = compute_response(
        ha1,
        "SHA-256",
        "REGISTER",
        creds.uri,
        creds.nonce,
        qop="auth",
        nc="00000000",
        cnonce=creds.cnonce,
    )
    zero = DigestCredentials(**{**_fields(creds), "nc": "00000000", "response": response})  # type: ignore[arg-type]
    assert challenger.verify(zero, "REGISTER", ha1) is AuthResult.FAILED
    assert challenger.verify(creds, "REGISTER", ha1) is AuthResult.OK


def test_wrong_method_or_tampered_fields_fail(clock: VirtualClock) -> None:
    challenger = make_challenger(clock)
    creds = answer(challenger, method="INVITE")
    ha1 = ha1_of("SHA-256")
    assert challenger.verify(creds, "REGISTER", ha1) is AuthResult.FAILED
    changes: list[dict[str, str | None]] = [
        {"uri": "sip:other.example.com"},
        {"cnonce": "other"},
        {"nc": "00000002"},
        {"response": "0" * 64},
        {"response": "not hex"},
        {"realm": "other.example.com"},
        {"opaque": "altered"},
        {"algorithm": "MD5"},
        {"algorithm": "SHA-1"},
        {"qop": None},
        {"qop": "auth-int"},
        {"qop": "auth-conf"},
        {"cnonce": None},
        {"nc": None},
        {"nc": "0000001"},
        {"nc": "0000000g"},
        {"nc": "00000000"},
    ]
    for change in changes:
        altered = DigestCredentials(**{**_fields(creds), **change})  # type: ignore[arg-type]
        assert challenger.verify(altered, "INVITE", ha1) is AuthResult.FAILED, change
    assert challenger.verify(creds, "INVITE", ha1) is AuthResult.OK


def _fields(creds: DigestCredentials) -> dict[str, str | None]:
    return {name: getattr(creds, name) for name in DigestCredentials.__dataclass_fields__}


def test_opaque_may_be_omitted_and_hex_case_is_ignored(clock: VirtualClock) -> None:
    challenger = make_challenger(clock)
    creds = answer(challenger)
    fields = {**_fields(creds), "opaque": None, "response": creds.response.upper()}
    altered = DigestCredentials(**fields)  # type: ignore[arg-type]
    assert challenger.verify(altered, "REGISTER", ha1_of("SHA-256")) is AuthResult.OK


def test_algorithm_not_offered_fails(clock: VirtualClock) -> None:
    sha_only = make_challenger(clock, algorithms=("SHA-256",))
    both = make_challenger(clock)
    creds = answer(both, "MD5")
    assert sha_only.verify(creds, "REGISTER", ha1_of("MD5")) is AuthResult.FAILED
    assert both.verify(creds, "REGISTER", ha1_of("MD5")) is AuthResult.OK


def test_replayed_nonce_count_fails_and_increasing_passes(clock: VirtualClock) -> None:
    challenger = make_challenger(clock)
    ha1 = ha1_of("SHA-256")
    challenge = parse_challenge(challenger.challenge_values()[0])
    first = answer(challenger, nc=1, challenge=challenge)
    assert challenger.verify(first, "REGISTER", ha1) is AuthResult.OK
    assert challenger.verify(first, "REGISTER", ha1) is AuthResult.FAILED
    second = answer(challenger, nc=2, challenge=challenge)
    assert challenger.verify(second, "REGISTER", ha1) is AuthResult.OK
    fifth = answer(challenger, nc=5, challenge=challenge)
    assert challenger.verify(fifth, "REGISTER", ha1) is AuthResult.OK
    third = answer(challenger, nc=3, challenge=challenge)
    assert challenger.verify(third, "REGISTER", ha1) is AuthResult.FAILED
    assert challenger.verify(second, "REGISTER", ha1) is AuthResult.FAILED
    assert challenger.tracked_nonces == 1


def test_failed_attempts_do_not_consume_nonce_counts(clock: VirtualClock) -> None:
    challenger = make_challenger(clock)
    challenge = parse_challenge(challenger.challenge_values()[0])
    bad = answer(challenger, nc=1, password="guess", challenge=challenge)
    assert challenger.verify(bad, "REGISTER", ha1_of("SHA-256")) is AuthResult.FAILED
    assert challenger.tracked_nonces == 0
    good = answer(challenger, nc=1, challenge=challenge)
    assert challenger.verify(good, "REGISTER", ha1_of("SHA-256")) is AuthResult.OK


def _forgeries(nonce: str) -> list[str]:
    raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    flipped = bytes([raw[0] ^ 1]) + raw[1:]
    retimed = raw[:7] + bytes([raw[7] ^ 1]) + raw[8:]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # The last character carries unused bits: another spelling of the same bytes.
    last = alphabet.index(nonce[-1])
    respelled = nonce[:-1] + alphabet[last ^ 1]
    other_secret = DigestChallenger(b"another secret, also 32 bytes...", REALM, lambda: 0.0)
    return [
        base64.urlsafe_b64encode(flipped).rstrip(b"=").decode(),
        base64.urlsafe_b64encode(retimed).rstrip(b"=").decode(),
        respelled,
        nonce[:-1],
        nonce + "A",
        nonce + "==",
        nonce[:10] + "+" + nonce[11:],
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        other_secret.new_nonce(),
        "",
    ]


def test_forged_nonce_fails(clock: VirtualClock) -> None:
    challenger = make_challenger(clock)
    ha1 = ha1_of("SHA-256")
    real = parse_challenge(challenger.challenge_values()[0])
    assert real is not None
    for forged in _forgeries(real.nonce):
        challenge = DigestChallenge(REALM, forged or "x", "SHA-256", ("auth",), real.opaque)
        creds = answer(challenger, challenge=challenge)
        assert challenger.verify(creds, "REGISTER", ha1) is AuthResult.FAILED, forged
    assert challenger.verify(answer(challenger, challenge=real), "REGISTER", ha1) is AuthResult.OK


def test_nonces_from_a_peer_server_with_the_same_secret_are_accepted(clock: VirtualClock) -> None:
    issuer = make_challenger(clock)
    verifier = make_challenger(clock)
    creds = answer(issuer)
    assert verifier.verify(creds, "REGISTER", ha1_of("SHA-256")) is AuthResult.OK


def test_expired_nonce_gives_stale_only_when_digest_is_right(clock: VirtualClock) -> None:
    challenger = make_challenger(clock, nonce_ttl=60.0)
    ha1 = ha1_of("SHA-256")
    challenge = parse_challenge(challenger.challenge_values()[0])
    good = answer(challenger, challenge=challenge)
    wrong = answer(challenger, password="guess", challenge=challenge)
    clock.now += 60.0
    assert challenger.verify(good, "REGISTER", ha1) is AuthResult.OK
    clock.now += 0.5
    later = answer(challenger, nc=2, challenge=challenge)
    assert challenger.verify(later, "REGISTER", ha1) is AuthResult.STALE
    assert challenger.verify(wrong, "REGISTER", ha1) is AuthResult.FAILED
    fresh = answer(challenger, nc=3)
    assert challenger.verify(fresh, "REGISTER", ha1) is AuthResult.OK


def test_nonce_from_the_future_is_stale(clock: VirtualClock) -> None:
    challenger = make_challenger(clock)
    creds = answer(challenger)
    clock.now -= 10
    assert challenger.verify(creds, "REGISTER", ha1_of("SHA-256")) is AuthResult.STALE


def test_expired_entries_are_dropped(clock: VirtualClock) -> None:
    challenger = make_challenger(clock, nonce_ttl=30.0)
    ha1 = ha1_of("SHA-256")
    for _ in range(5):
        assert challenger.verify(answer(challenger), "REGISTER", ha1) is AuthResult.OK
    assert challenger.tracked_nonces == 5
    clock.now += 31.0
    assert challenger.verify(answer(challenger), "REGISTER", ha1) is AuthResult.OK
    assert challenger.tracked_nonces == 1


def test_bounded_tracking_never_lets_a_replay_through(clock: VirtualClock) -> None:
    challenger = make_challenger(clock, max_tracked_nonces=3)
    ha1 = ha1_of("SHA-256")
    used = []
    for _ in range(10):
        creds = answer(challenger)
        clock.now += 1.0
        assert challenger.verify(creds, "REGISTER", ha1) is AuthResult.OK
        used.append(creds)
        assert challenger.tracked_nonces <= 3
    for creds in used:
        assert challenger.verify(creds, "REGISTER", ha1) is not AuthResult.OK
    # A forgotten nonce that was never answered is refused as stale; a new one works.
    unanswered = answer(challenger)
    clock.now += 1.0
    assert challenger.verify(answer(challenger), "REGISTER", ha1) is AuthResult.OK
    for _ in range(3):
        clock.now += 1.0
        assert challenger.verify(answer(challenger), "REGISTER", ha1) is AuthResult.OK
    assert challenger.verify(unanswered, "REGISTER", ha1) is AuthResult.STALE


def test_rfc2069_response_refused_by_default(clock: VirtualClock) -> None:
    challenger = make_challenger(clock)
    offered = parse_challenge(challenger.challenge_values()[0])
    assert offered is not None
    legacy = DigestChallenge(offered.realm, offered.nonce, offered.algorithm, (), offered.opaque)
    creds = answer(challenger, challenge=legacy)
    assert creds.qop is None and creds.nc is None and creds.cnonce is None
    assert challenger.verify(creds, "REGISTER", ha1_of("SHA-256")) is AuthResult.FAILED


def test_rfc2069_response_allowed_once_per_nonce(clock: VirtualClock) -> None:
    challenger = make_challenger(clock, allow_rfc2069=True)
    offered = parse_challenge(challenger.challenge_values()[1])
    assert offered is not None and offered.algorithm == "MD5"
    legacy = DigestChallenge(offered.realm, offered.nonce, offered.algorithm, (), offered.opaque)
    creds = answer(challenger, challenge=legacy, algorithm="MD5")
    ha1 = ha1_of("MD5")
    assert challenger.verify(creds, "REGISTER", ha1) is AuthResult.OK
    assert challenger.verify(creds, "REGISTER", ha1) is AuthResult.STALE
    with_qop = answer(challenger, challenge=offered, nc=7, algorithm="MD5")
    assert challenger.verify(with_qop, "REGISTER", ha1) is AuthResult.FAILED
    wrong = answer(challenger, challenge=legacy, password="guess", algorithm="MD5")
    assert challenger.verify(wrong, "REGISTER", ha1) is AuthResult.FAILED


def test_auth_int_covers_the_body(clock: VirtualClock) -> None:
    challenger = make_challenger(clock, offer_auth_int=True)
    offered = parse_challenge(challenger.challenge_values()[0])
    assert offered is not None and offered.qop == ("auth", "auth-int")
    int_only = DigestChallenge(offered.realm, offered.nonce, "SHA-256", ("auth-int",))
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    ha1 = ha1_of("SHA-256")
    for nc, sent, received, result in [
        (1, body, body, AuthResult.OK),
        (2, body, body + b"a=tampered\r\n", AuthResult.FAILED),
    ]:
        value = build_authorization(int_only, "INVITE", URI, "alice", "secret", nc=nc, body=sent)
        creds = parse_credentials(value)
        assert creds is not None and creds.qop == "auth-int"
        assert challenger.verify(creds, "INVITE", ha1, received) is result
    plain = make_challenger(clock)
    value = build_authorization(int_only, "INVITE", URI, "alice", "secret", nc=3, body=body)
    creds = parse_credentials(value)
    assert creds is not None
    assert plain.verify(creds, "INVITE", ha1, body) is AuthResult.FAILED


def test_username_with_quotes_and_backslashes_round_trips(clock: VirtualClock) -> None:
    challenger = make_challenger(clock)
    username = 'a"b\\c d,e=f ünï'
    creds = answer(challenger, username=username)
    assert creds.username == username
    ha1 = ha1_of("SHA-256", username=username)
    assert challenger.verify(creds, "REGISTER", ha1) is AuthResult.OK


# --- client side --------------------------------------------------------------------------------


def test_build_authorization_refuses_bad_input() -> None:
    challenge = DigestChallenge(REALM, "n", "SHA-256", ("auth",))
    with pytest.raises(ValueError):
        build_authorization(challenge, "REGISTER", URI, "alice\r\nX: y", "secret")
    with pytest.raises(ValueError):
        build_authorization(challenge, "REGISTER", URI, "alice", "secret", nc=0)
    with pytest.raises(ValueError):
        build_authorization(challenge, "REGISTER", URI, "alice", "secret", nc=2**32)
    for unsupported in [
        DigestChallenge(REALM, "n", "SHA-512-256", ("auth",)),
        DigestChallenge(REALM, "n", "SHA-256", ("auth-conf",)),
        DigestChallenge(REALM, "n", "MD5-sess", ()),
    ]:
        assert not unsupported.supported
        with pytest.raises(ValueError):
            build_authorization(unsupported, "REGISTER", URI, "alice", "secret")


def test_build_authorization_format() -> None:
    challenge = DigestChallenge(REALM, "abc", "MD5", ("auth",), "op")
    value = build_authorization(challenge, "REGISTER", URI, "alice", "pw", cnonce="c1", nc=10)
    assert value.startswith(f'Digest username="alice", realm="{REALM}", nonce="abc", uri="{URI}"')
    assert value.endswith(', algorithm=MD5, cnonce="c1", qop=auth, nc=0000000a, opaque="op"')
    random_cnonces = {
        parse_credentials(build_authorization(challenge, "REGISTER", URI, "a", "p")).cnonce  # type: ignore[union-attr]
        for _ in range(3)
    }
    assert len(random_cnonces) == 3


# --- parsing ------------------------------------------------------------------------------------

MINIMAL = 'Digest username="u", realm="r", nonce="n", uri="sip:x", response="abcd"'


def test_parse_minimal_defaults() -> None:
    creds = parse_credentials(MINIMAL)
    assert creds == DigestCredentials("u", "r", "n", "sip:x", "abcd")
    assert creds.algorithm == "MD5"


@pytest.mark.parametrize(
    "value",
    [
        MINIMAL.replace("Digest", "digest"),
        MINIMAL.replace("Digest", "DIGEST\t"),
        "  " + MINIMAL + "  ",
        MINIMAL.replace(", ", " ,\r\n\t"),
        MINIMAL.replace("=", " = "),
        MINIMAL + ', qop="auth", nc=00000001, cnonce="x"',
        MINIMAL + ', unknown=token, other="quoted, with comma"',
    ],
)
def test_parse_accepts_valid_variants(value: str) -> None:
    creds = parse_credentials(value)
    assert creds is not None
    assert (creds.username, creds.realm, creds.nonce, creds.uri) == ("u", "r", "n", "sip:x")


def test_parse_unescapes_quoted_strings() -> None:
    creds = parse_credentials(MINIMAL.replace('"u"', r'"a\"b\\c\d"'))
    assert creds is not None and creds.username == 'a"b\\cd'


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Digest",
        "Digest ",
        'Digestusername="u"',
        "Basic dXNlcjpwYXNz",
        MINIMAL.replace("Digest", "Digest,"),
        MINIMAL.replace('uri="sip:x", ', ""),
        MINIMAL.replace('username="u", ', ""),
        MINIMAL.replace('response="abcd"', 'response=""'),
        MINIMAL.replace('nonce="n"', 'nonce=""'),
        MINIMAL + ",",
        MINIMAL + ", , qop=auth",
        MINIMAL + " qop=auth",
        MINIMAL + ", qop",
        MINIMAL + ", qop=",
        MINIMAL + ', username="again"',
        MINIMAL + ', USERNAME="again"',
        MINIMAL[:-1],
        MINIMAL[:-1] + "\\",
        MINIMAL.replace('"u"', '"u\x00"'),
        MINIMAL.replace('"u"', '"u\r\nx"'),
        MINIMAL.replace('"u"', "u@host"),
        MINIMAL + ", " + ", ".join(f"p{i}=v" for i in range(28)),
        MINIMAL + ', x="' + "a" * MAX_HEADER_LENGTH + '"',
    ],
)
def test_parse_rejects_malformed(value: str) -> None:
    assert parse_credentials(value) is None


def test_parameter_limit_is_exactly_32() -> None:
    at_limit = MINIMAL + ", " + ", ".join(f"p{i}=v" for i in range(27))
    assert parse_credentials(at_limit) is not None
    assert parse_credentials(at_limit + ", p99=v") is None


@pytest.mark.parametrize(
    "value",
    [
        'Basic realm="r"',
        'Digest nonce="n"',
        'Digest realm="r"',
        'Digest realm="r", nonce=""',
        'Digest realm="r", nonce="n", qop="auth',
    ],
)
def test_parse_challenge_rejects(value: str) -> None:
    assert parse_challenge(value) is None


# --- fuzzing ------------------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "Digest ",
        "digest\t",
        "username",
        "realm",
        "nonce",
        "uri",
        "response",
        "qop",
        "nc",
        "cnonce",
        "algorithm",
        "opaque",
        "=",
        '"',
        "\\",
        ",",
        " ",
        "\t",
        "\r\n ",
        "\r\n",
        "auth",
        "MD5",
        "SHA-256",
        "00000001",
        "sip:a@b",
        "\x00",
        "ü",
        "\ud800",
        "\udcff",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.lists(_PIECES, max_size=60).map("".join)))
def test_parsers_never_raise(value: str) -> None:
    creds = parse_credentials(value)
    assert creds is None or isinstance(creds, DigestCredentials)
    challenge = parse_challenge(value)
    assert challenge is None or isinstance(challenge, DigestChallenge)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_PIECES, max_size=40).map("".join),
    st.sampled_from(["MD5", "SHA-256", "md5-SESS", "x"]),
    st.one_of(st.none(), st.sampled_from(["auth", "AUTH", "auth-int", ""])),
    st.one_of(st.none(), st.text(max_size=10)),
    st.one_of(st.none(), st.text(max_size=64)),
)
def test_verify_never_raises(
    text: str, algorithm: str, qop: str | None, nc: str | None, ha1: str | None
) -> None:
    challenger = DigestChallenger(SECRET, REALM, lambda: 0.0, allow_rfc2069=True)
    nonce = challenger.new_nonce()
    creds = DigestCredentials(text, REALM, nonce, text, text or "0", algorithm, text, nc, qop, text)
    assert challenger.verify(creds, text, ha1, text.encode("utf-8", "surrogatepass")) in AuthResult


@settings(max_examples=50, deadline=None)
@given(
    username=st.text(st.characters(min_codepoint=0x20, exclude_characters="\x7f"), max_size=20),
    password=st.text(max_size=20),
    algorithm=st.sampled_from(["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"]),
)
def test_round_trip_property(username: str, password: str, algorithm: str) -> None:
    challenger = DigestChallenger(SECRET, REALM, lambda: 0.0, algorithms=(algorithm,))
    creds = answer(challenger, algorithm, password=password, username=username)
    assert creds.username == username
    ha1 = compute_ha1(username, REALM, password, algorithm)
    assert challenger.verify(creds, "REGISTER", ha1) is AuthResult.OK


def test_an_immediate_answer_is_never_stale(clock: VirtualClock) -> None:
    # A nonce issued at x.0006 s and answered at once must not look issued in the future.
    clock.now = 1_700_000_000.0006
    challenger = make_challenger(clock)
    creds = answer(challenger)
    assert challenger.verify(creds, "REGISTER", ha1_of("SHA-256")) is AuthResult.OK

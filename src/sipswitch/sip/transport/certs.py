"""TLS contexts and certificates: the protocol and cipher policy, the server's certificate, key and
chain loaded into a context (and reloaded without a restart), the client context that verifies
other servers, and matching a peer's certificate against a SIP domain (RFC 5922).

Policy: TLS 1.2 and 1.3 only; in TLS 1.2 only ECDHE key exchange with AES-GCM or
ChaCha20-Poly1305 (TLS 1.3 suites are all AEAD); no compression, no renegotiation.

Reload: ``ServerCertificates.reload()`` builds a whole new context and swaps it in only when the
files load cleanly; a broken file keeps the old certificate in service. Each accepted connection
takes the context current at that moment, so connections already up keep theirs.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are configured apart and are all AEAD).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP:!DSS"


class CertificateError(Exception):
    """The certificate, key or chain cannot be used; the message says which file and why."""


def apply_policy(context: ssl.SSLContext) -> ssl.SSLContext:
    """Restrict ``context`` to TLS 1.2/1.3 with forward-secret AEAD suites."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE
    return context


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """Paths of a certificate (PEM, may already hold the chain), its key and an optional chain."""

    cert: Path
    key: Path
    chain: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.cert, self.key, self.chain) if p is not None]

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """(mtime, size, inode) of each file; any change means the files were replaced."""
        out = []
        for path in self.paths():
            try:
                st = path.stat()
            except OSError:
                out.append((0, 0, 0))
            else:
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What the log and the operator want to know about a loaded certificate."""

    subject: str
    names: tuple[str, ...]
    not_after: datetime
    fingerprint_sha256: str


def describe_certificate(pem: bytes) -> CertificateInfo:
    """Subject, names (DNS, URI and IP subjectAltName entries), expiry and fingerprint of the
    first certificate in ``pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from None
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        names += [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        names += [f"URI:{n}" for n in san.get_values_for_type(x509.UniformResourceIdentifier)]
        names += [f"IP:{n}" for n in san.get_values_for_type(x509.IPAddress)]
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        names=tuple(names),
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":"),
    )


def build_server_context(files: CertificateFiles) -> ssl.SSLContext:
    """A server context holding ``files``; CertificateError says what is wrong with them."""
    context = apply_policy(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    try:
        cert_pem = files.cert.read_bytes()
        chain_pem = files.chain.read_bytes() if files.chain is not None else b""
        files.key.stat()
    except OSError as exc:
        raise CertificateError(f"{exc.filename}: {exc.strerror}") from None
    _load_chain(context, files, cert_pem, chain_pem)
    return context


def _load_chain(
    context: ssl.SSLContext, files: CertificateFiles, cert_pem: bytes, chain_pem: bytes
) -> None:
    # load_cert_chain wants the certificate and its chain in one file.
    combined: str | None = None
    cert_path = str(files.cert)
    try:
        if chain_pem:
            fd, combined = tempfile.mkstemp(prefix="sipswitch-chain-", suffix=".pem")
            with os.fdopen(fd, "wb") as out:
                out.write(cert_pem.rstrip(b"\n") + b"\n" + chain_pem)
            cert_path = combined
        try:
            context.load_cert_chain(cert_path, str(files.key))
        except ssl.SSLError as exc:
            raise CertificateError(
                f"{files.cert} / {files.key}: cannot load the certificate and key "
                f"({exc.reason or exc})"
            ) from None
        except OSError as exc:
            raise CertificateError(f"{exc.filename or files.key}: {exc.strerror}") from None
    finally:
        if combined is not None:
            os.unlink(combined)


def build_client_context(
    ca_file: Path | None = None, files: CertificateFiles | None = None
) -> ssl.SSLContext:
    """A context for connections to other servers: the peer's chain must verify against
    ``ca_file`` (or the system's trust store) and its name is checked with
    :func:`matches_sip_domain` after the handshake (``check_hostname`` is off because RFC 5922
    rules differ from HTTPS ones). ``files`` adds our own certificate for mutual TLS."""
    context = apply_policy(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        if ca_file is not None:
            context.load_verify_locations(cafile=str(ca_file))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"{ca_file}: cannot load CA certificates ({exc})") from None
    if files is not None:
        cert_pem = files.cert.read_bytes()
        chain_pem = files.chain.read_bytes() if files.chain is not None else b""
        _load_chain(context, files, cert_pem, chain_pem)
    return context


def sip_identities(peercert: Mapping[str, Any]) -> list[str]:
    """The SIP domain identities of a certificate (``SSLObject.getpeercert()`` form), by
    RFC 5922 §7.1: the hosts of ``sip:`` URIs in subjectAltName; when there are none, its DNS
    names; only when there is no subjectAltName at all, the most specific Common Name."""
    san: Iterable[tuple[str, str]] = peercert.get("subjectAltName", ()) or ()
    uris: list[str] = []
    dns: list[str] = []
    any_san = False
    for kind, value in san:
        any_san = True
        if kind == "URI":
            scheme, _, rest = value.partition(":")
            # A SIP domain identity has no user part, port or parameters.
            if scheme.lower() == "sip" and rest and not any(c in rest for c in "@:;?"):
                uris.append(rest.lower())
        elif kind == "DNS":
            dns.append(value.lower())
    if uris:
        return uris
    if dns:
        return dns
    if any_san:
        return []
    common_names = [
        value
        for rdn in peercert.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    ]
    return [common_names[-1].lower()] if common_names else []


def matches_sip_domain(peercert: Mapping[str, Any], domain: str) -> bool:
    """Whether the certificate names the SIP domain ``domain`` (RFC 5922 §7.2): an exact,
    case-insensitive match; a wildcard in the certificate never matches."""
    wanted = domain.strip().rstrip(".").lower()
    if not wanted:
        return False
    for identity in sip_identities(peercert):
        if "*" in identity:
            continue
        if identity.rstrip(".") == wanted:
            return True
    return False


class ServerCertificates:
    """The server's certificate, key and chain: loaded at start, reloaded on demand (SIGHUP) and
    by ``check()`` when the files changed; ``current`` is the context for new connections."""

    def __init__(self, files: CertificateFiles) -> None:
        self.files = files
        self._current = build_server_context(files)
        self._stamp = files.stamp()
        self.info = self._describe()
        self.reloads = 0

    @property
    def current(self) -> ssl.SSLContext:
        """The context new connections get."""
        return self._current

    def _describe(self) -> CertificateInfo | None:
        try:
            info = describe_certificate(self.files.cert.read_bytes())
        except (OSError, CertificateError) as exc:
            log.warning("cannot read the certificate details of %s: %s", self.files.cert, exc)
            return None
        now = datetime.now(UTC)
        if info.not_after <= now:
            log.error("the TLS certificate %s expired on %s", self.files.cert, info.not_after)
        else:
            log.info(
                "TLS certificate %s (%s) valid until %s",
                info.subject,
                ", ".join(info.names) or "no subjectAltName",
                info.not_after.isoformat(),
            )
        return info

    def reload(self) -> bool:
        """Load the files again; True when the new certificate is in service. On failure the
        previous one stays and the error is logged."""
        stamp = self.files.stamp()
        try:
            context = build_server_context(self.files)
        except CertificateError as exc:
            self._stamp = stamp  # do not retry the same broken files every check
            log.error("TLS certificate not reloaded, keeping the previous one: %s", exc)
            return False
        self._current = context
        self._stamp = stamp
        self.reloads += 1
        self.info = self._describe()
        log.info("TLS certificate reloaded from %s", self.files.cert)
        return True

    def check(self) -> bool:
        """Reload when any of the files changed since the last load; True when reloaded."""
        if self.files.stamp() == self._stamp:
            return False
        return self.reload()


def write_self_signed(
    host: str, cert_path: Path, key_path: Path, days: int = 3650
) -> CertificateInfo:
    """Write a self-signed certificate for ``host`` (a name or an IP address) and its private key
    (RSA 2048, readable by the owner only) as PEM files; returns what was written.

    The certificate names ``host`` as Common Name and in subjectAltName (a name as DNS and as
    ``sip:`` URI per RFC 5922, an address as IP) and may act as its own CA, so a phone can be
    told to trust it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    host = host.strip().rstrip(".")
    if not host or len(host) > 253:
        raise ValueError("the host must be 1 to 253 characters")
    names: list[x509.GeneralName]
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not all(part and part.replace("-", "").isalnum() for part in host.split(".")):
            raise ValueError(f"{host!r} is neither a host name nor an IP address") from None
        names = [x509.DNSName(host.lower()), x509.UniformResourceIdentifier(f"sip:{host.lower()}")]
    else:
        host = str(address)
        names = [x509.IPAddress(address)]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    # The key is created private (0600) before any byte is written into it.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert_pem)
    return describe_certificate(cert_pem)

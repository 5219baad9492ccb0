"""How the client trusts a cairn-server's certificate: system CAs, a CA bundle, or a pin.

A `TlsPolicy` says which: by default the system's CA store; `ca_file` trusts the CAs in one
PEM file instead (a private CA); `fingerprint` pins the server's certificate by the SHA-256 of
its DER bytes and skips CA checks (a self-signed server, trusted on first use after the user
compared `format_fingerprint(await fetch_fingerprint(url))` with what the server prints).
"""

import asyncio
import hashlib
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from shared.errors import AuthError, StorageError, StorageUnavailable, UsageError

logger = logging.getLogger(__name__)

_FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")
_FETCH_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 2.0


class UntrustedCertificate(AuthError):
    """The server's certificate is not trusted (unknown CA, self-signed, or not the pinned one).

    Not transient: retrying cannot help until the user pins the certificate or names its CA."""

    code = "untrusted_certificate"


@dataclass(frozen=True)
class TlsPolicy:
    """Which certificates the client accepts; the default trusts the system's CAs.

    `fingerprint` is the SHA-256 of the server certificate's DER bytes, as 64 lowercase hex
    digits (colons and upper case are accepted and normalised). When set, it pins that exact
    certificate instead of checking CAs, and `ca_file` is not used."""

    ca_file: Path | None = None
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.fingerprint is not None:
            object.__setattr__(self, "fingerprint", normalise_fingerprint(self.fingerprint))
        if self.ca_file is not None:
            object.__setattr__(self, "ca_file", Path(self.ca_file))


SYSTEM_CAS = TlsPolicy()  # the default: trust the CAs the operating system trusts


def normalise_fingerprint(text: str) -> str:
    """`text` as 64 lowercase hex digits (colons, spaces and case removed); UsageError if it is
    not a SHA-256 fingerprint."""
    cleaned = re.sub(r"[\s:]", "", text).lower()
    if not _FINGERPRINT_RE.fullmatch(cleaned):
        raise UsageError(
            f"not a SHA-256 certificate fingerprint: {text[:120]!r} (64 hex digits, "
            "optionally in pairs separated by ':')"
        )
    return cleaned


def format_fingerprint(hex_digest: str) -> str:
    """A fingerprint for people to compare: `AB:CD:...:EF` (32 pairs)."""
    cleaned = normalise_fingerprint(hex_digest).upper()
    return ":".join(cleaned[i : i + 2] for i in range(0, len(cleaned), 2))


def client_ssl(policy: TlsPolicy) -> ssl.SSLContext | aiohttp.Fingerprint:
    """The `ssl` argument for aiohttp that implements `policy`; UsageError if the CA file
    cannot be read."""
    if policy.fingerprint is not None:
        return aiohttp.Fingerprint(bytes.fromhex(policy.fingerprint))
    if policy.ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(policy.ca_file))
    except FileNotFoundError as exc:
        raise UsageError(f"CA bundle {policy.ca_file} does not exist") from exc
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot use {policy.ca_file} as a CA bundle: {reason}") from exc


def untrusted(base_url: str, reason: str) -> UntrustedCertificate:
    """The error for a certificate that failed verification, saying how to fix it."""
    return UntrustedCertificate(
        f"the certificate of {base_url} is not trusted ({reason}); if this is your server, "
        f"pin its certificate with `cairn destination add {base_url}` or name its CA "
        "with --cacert FILE"
    )


def fingerprint_mismatch(base_url: str, expected: bytes, got: bytes) -> UntrustedCertificate:
    """The error for a pinned server that presented another certificate."""
    return UntrustedCertificate(
        f"the certificate of {base_url} is not the pinned one (pinned "
        f"{format_fingerprint(expected.hex())}, got {format_fingerprint(got.hex())}); if the "
        f"server's certificate was replaced on purpose, pin the new one with "
        f"`cairn destination add {base_url}`"
    )


async def fetch_fingerprint(base_url: str, *, timeout: float = _FETCH_TIMEOUT) -> str:
    """The SHA-256 (64 lowercase hex) of the certificate the https server at `base_url`
    presents, fetched WITHOUT verifying it: only for showing to the user to confirm (TOFU).

    UsageError for a non-https URL, StorageUnavailable if the server cannot be reached,
    StorageError if it does not speak TLS."""
    url = URL(base_url)
    if url.scheme != "https" or not url.host:
        raise UsageError(f"only an https:// server has a certificate to pin; got {base_url}")
    host, port = url.host, url.port or 443
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # deliberately: the user checks the fingerprint
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host
            )
    except ssl.SSLError as exc:
        raise StorageError(
            f"TLS handshake with {base_url} failed ({exc.reason or exc}); is it an https server?"
        ) from exc
    except TimeoutError as exc:
        raise StorageUnavailable(f"cannot reach {base_url}: timed out after {timeout:g} s") from exc
    except OSError as exc:
        raise StorageUnavailable(f"cannot reach {base_url}: {exc.strerror or exc}") from exc
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        writer.close()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await writer.wait_closed()
        except (OSError, ssl.SSLError, TimeoutError):
            pass  # closing a probe connection: the certificate is all we came for
    if not der:
        raise StorageError(f"{base_url} presented no certificate")
    digest = hashlib.sha256(der).hexdigest()
    logger.debug("certificate of %s has SHA-256 %s", base_url, digest)
    return digest

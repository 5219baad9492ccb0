"""Run the server: bind, log where it listens, serve until SIGTERM/SIGINT, shut down cleanly."""

import asyncio
import logging
import signal
import ssl
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from server.app import create_app
from server.config import ServerConfig
from shared.errors import UsageError

logger = logging.getLogger(__name__)

# Let uploads in flight finish (a 64 MiB pack on a slow link) before a restart cuts them off.
_SHUTDOWN_TIMEOUT = 30.0


def cert_fingerprint(path: Path) -> str:
    """SHA-256 of the (first) certificate in PEM file `path`, as AB:CD:... — what a client
    shows its user before pinning it (trust on first use)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read the TLS certificate {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise UsageError(f"{path} is not a PEM certificate") from exc
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except FileNotFoundError as exc:
        raise UsageError(f"TLS certificate or key not found: {exc.filename}") from exc
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cannot load the TLS certificate {config.tls_cert} and key "
                         f"{config.tls_key}: {exc}") from exc
    return context


async def serve(config: ServerConfig) -> None:
    ssl_context = tls_context(config)
    runner = web.AppRunner(create_app(config), access_log=None,
                           shutdown_timeout=_SHUTDOWN_TIMEOUT)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, config.listen_host, config.listen_port,
                           ssl_context=ssl_context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise UsageError(f"cannot listen on {config.listen_host}:{config.listen_port}: "
                             f"{exc.strerror or exc}") from exc
        for address in runner.addresses:
            host, port = address[0], address[1]
            shown = f"[{host}]" if ":" in host else host
            logger.info("listening", extra={"event": "listening",
                                            "url": f"{config.scheme}://{shown}:{port}"})
        if config.tls_cert is not None:
            logger.info("TLS certificate fingerprint (SHA-256) %s",
                        cert_fingerprint(config.tls_cert),
                        extra={"event": "tls", "fingerprint": cert_fingerprint(config.tls_cert)})
        await stop.wait()
        logger.info("stopping", extra={"event": "stopping"})
    finally:
        await runner.cleanup()
    logger.info("stopped", extra={"event": "stopped"})

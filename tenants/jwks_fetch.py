"""Public keys a client publishes at its registered JWKS URL (private_key_jwt, `jku`).

Only the URL an operator registered on the client (ApiClient.jwks_url) is ever fetched:
an assertion's `jku` must equal it (tenants/assertions.py). The fetch is still guarded as
if the URL were hostile, because the host behind a name can change after registration:
https only, every resolved address public, the connection pinned to the address we
checked (no second lookup to rebind), no redirects, connect and read timeouts and an
overall deadline, a 64 KiB cap, and a JSON object with a `keys` array.

Keys are kept per process for JWKS_URL_CACHE_SECONDS. An assertion naming a `kid` the
kept set lacks makes us fetch again (the client rotated its keys), but one URL is fetched
at most once per JWKS_URL_REFRESH_SECONDS, failures included: a caller cannot make us
fetch on every request.
"""

import ipaddress
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3
from django.conf import settings

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES = 64 * 1024
MAX_JWKS_URL_LENGTH = 500  # ApiClient.jwks_url's column
_READ_CHUNK_BYTES = 8192
_LOOPBACK_NAMES = {"localhost"}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class JwksUrlError(ValueError):
    """A JWKS URL that may not be registered or fetched."""


class JwksFetchError(Exception):
    """The registered JWKS URL did not give a usable key set."""


def _loopback_allowed() -> bool:
    return bool(settings.JWKS_URL_ALLOW_LOOPBACK_HTTP)


def _address_refusal(address: IpAddress) -> str:
    """Why we will not connect to this address, or '' when we may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "" if _loopback_allowed() else "a loopback address"
    # is_global is false for private, link-local, reserved, shared (CGNAT), documentation
    # and unspecified ranges; a few multicast ranges count as global, so they are named.
    if address.is_multicast or not address.is_global:
        return "a private, link-local, multicast or reserved address"
    return ""


def _literal_address(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_loopback_host(host: str) -> bool:
    literal = _literal_address(host)
    return host.lower() in _LOOPBACK_NAMES or (literal is not None and literal.is_loopback)


def jwks_url_check(url: str) -> str:
    """The rule for a JWKS URL, at registration and before every fetch.

    https with a host, no credentials or fragment; a literal IP address must be public.
    With JWKS_URL_ALLOW_LOOPBACK_HTTP (demo and tests only) a loopback host may be used,
    over http too. Names are resolved only when fetching (see _resolved_address).
    """
    if len(url) > MAX_JWKS_URL_LENGTH:
        raise JwksUrlError(f"a JWKS URL is at most {MAX_JWKS_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise JwksUrlError(f"'{url}' is not a URL") from None
    host = parts.hostname or ""
    if not host:
        raise JwksUrlError("a JWKS URL must name a host")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise JwksUrlError("a JWKS URL may not carry credentials or a fragment")
    if port == 0:
        raise JwksUrlError("a JWKS URL may not name port 0")
    loopback_http = parts.scheme == "http" and _loopback_allowed() and _is_loopback_host(host)
    if parts.scheme != "https" and not loopback_http:
        raise JwksUrlError("a JWKS URL must use https")
    literal = _literal_address(host)
    if literal is not None and (refusal := _address_refusal(literal)):
        raise JwksUrlError(f"a JWKS URL may not name {refusal}")
    return url


def _resolved_address(host: str, port: int) -> IpAddress:
    """The address to connect to: every address the name resolves to must be allowed, so
    the answer we check is the one we use whichever address a resolver lists first."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise JwksFetchError(f"cannot resolve {host}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise JwksFetchError(f"cannot resolve {host}")
    for address in addresses:
        if refusal := _address_refusal(address):
            raise JwksFetchError(f"{host} resolves to {refusal}")
    return addresses[0]


def _read_capped(response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_JWKS_BYTES:
        raise JwksFetchError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    body = bytearray()
    while chunk := response.read1(_READ_CHUNK_BYTES):
        body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise JwksFetchError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
        # The read timeout bounds each wait; this bounds a server that trickles bytes.
        if time.monotonic() > deadline:
            raise JwksFetchError("the JWKS URL answered too slowly")
    return bytes(body)


def _download(url: str) -> bytes:
    parts = urlsplit(jwks_url_check(url))
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    address = _resolved_address(host, port)
    connect_seconds = settings.JWKS_URL_CONNECT_TIMEOUT_SECONDS
    read_seconds = settings.JWKS_URL_READ_TIMEOUT_SECONDS
    timeout = urllib3.Timeout(connect=connect_seconds, read=read_seconds)
    # Connect to the checked address; TLS still verifies the certificate for the name.
    pool: urllib3.HTTPConnectionPool = (
        urllib3.HTTPSConnectionPool(
            str(address),
            port,
            timeout=timeout,
            retries=False,
            server_hostname=host,
            assert_hostname=host,
        )
        if https
        else urllib3.HTTPConnectionPool(str(address), port, timeout=timeout, retries=False)
    )
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + connect_seconds + read_seconds
    try:
        response = pool.urlopen(
            "GET",
            target,
            headers={
                "Host": parts.netloc,  # as written: credentials are refused by the URL rule
                "Accept": "application/jwk-set+json, application/json",
                # Compressed bodies are not decoded: the cap is on what we parse.
                "Accept-Encoding": "identity",
            },
            redirect=False,
            retries=False,
            preload_content=False,
            decode_content=False,
        )
        try:
            if response.status != 200:
                followed = " (redirects are not followed)" if 300 <= response.status < 400 else ""
                raise JwksFetchError(f"the JWKS URL answered {response.status}{followed}")
            return _read_capped(response, deadline)
        finally:
            response.release_conn()
    except urllib3.exceptions.NewConnectionError:  # before TimeoutError: it subclasses it
        raise JwksFetchError("the JWKS URL could not be read (connection refused)") from None
    except urllib3.exceptions.TimeoutError:
        raise JwksFetchError("the JWKS URL did not answer in time") from None
    except urllib3.exceptions.HTTPError as exc:
        raise JwksFetchError(f"the JWKS URL could not be read ({type(exc).__name__})") from None
    finally:
        pool.close()


def jwks_parse(body: bytes) -> list[dict[str, Any]]:
    """The keys of a JWKS document: a JSON object with a `keys` array of objects."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise JwksFetchError("the JWKS URL did not answer JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksFetchError("the JWKS URL's document has no 'keys' array")
    return [key for key in document["keys"] if isinstance(key, dict)]


def jwks_fetch(url: str) -> list[dict[str, Any]]:
    """Fetch and parse the key set at a JWKS URL, now (no cache)."""
    return jwks_parse(_download(url))


@dataclass
class _Kept:
    keys: list[dict[str, Any]] | None  # None: never fetched successfully
    fetched_at: float  # monotonic time of the last successful fetch
    tried_at: float  # monotonic time of the last attempt, successful or not
    error: str = ""


_kept: dict[str, _Kept] = {}
_url_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _url_lock(url: str) -> threading.Lock:
    with _locks_guard:
        return _url_locks.setdefault(url, threading.Lock())


def jwks_url_keys(url: str, *, kid: str) -> list[dict[str, Any]]:
    """The keys published at a registered JWKS URL, from the process cache when it is
    fresh and knows `kid`, else fetched (at most once per JWKS_URL_REFRESH_SECONDS).

    Raises JwksFetchError when no usable key set can be had. The caller looks `kid` up in
    the answer: a set without it means the key is not published.
    """
    # One fetch per URL at a time: concurrent requests wait for it and use its answer.
    with _url_lock(url):
        now = time.monotonic()
        kept = _kept.get(url)
        fresh = (
            kept is not None
            and kept.keys is not None
            and now - kept.fetched_at < settings.JWKS_URL_CACHE_SECONDS
        )
        if kept is not None and fresh and any(key.get("kid") == kid for key in kept.keys or []):
            return kept.keys or []
        if kept is not None and now - kept.tried_at < settings.JWKS_URL_REFRESH_SECONDS:
            if fresh:
                return kept.keys or []
            raise JwksFetchError(kept.error or "the JWKS URL gave no usable keys")
        try:
            keys = jwks_fetch(url)
        except JwksFetchError as exc:
            logger.warning("jwks url fetch failed", extra={"url": url, "error": str(exc)})
            _kept[url] = _Kept(
                keys=kept.keys if kept is not None and fresh else None,
                fetched_at=kept.fetched_at if kept is not None else now,
                tried_at=now,
                error=str(exc),
            )
            if kept is not None and fresh:
                return kept.keys or []
            raise
        logger.info(
            "jwks url fetched",
            extra={"url": url, "kids": [key.get("kid") for key in keys]},
        )
        _kept[url] = _Kept(keys=keys, fetched_at=now, tried_at=now)
        return keys


def jwks_url_cache_clear() -> None:
    """Forget every kept key set (a process that must re-read every JWKS URL)."""
    with _locks_guard:
        _kept.clear()

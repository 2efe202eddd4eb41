"""Fetching image URLs without letting clients reach what the server can reach (SSRF).

A pod can reach the cloud metadata service (IAM credentials at 169.254.169.254), the
Kubernetes API, and every internal service. So a URL is fetched only if every address its host
resolves to is public, or permitted by the allowlist; the connection then goes to the address
that was checked (no second DNS lookup an attacker could answer differently), and each redirect
is checked again. Bodies are streamed and cut off at the size limit; the whole fetch has one
deadline; a semaphore bounds downloads in flight across all requests.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from kakehashi.addresses import Allowlist, IPAddress, host_header, resolve, why_refused
from kakehashi_inference.errors import (
    DownloadTimeout,
    InvalidInput,
    PayloadTooLarge,
    URLRefused,
)
from kakehashi_inference.metrics import Metrics
from kakehashi_inference.settings import Settings

if TYPE_CHECKING:
    import httpx

_REDIRECTS = {301, 302, 303, 307, 308}


class Downloader:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._allowlist = Allowlist(settings.url_allowlist)
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def _ensure(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        # Created on first use, inside the running loop (Lambda has no lifespan to do it).
        # httpx is imported here, not at start: a server whose clients send no URLs never
        # pays for it, and start-up (readiness) stays fast.
        import httpx

        if self._client is None or self._semaphore is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False,  # each hop is checked by us
                trust_env=False,  # a proxy from the environment would bypass the address check
                timeout=httpx.Timeout(self._settings.download_timeout_s),
                limits=httpx.Limits(max_connections=self._settings.max_downloads),
            )
            self._semaphore = asyncio.Semaphore(self._settings.max_downloads)
        return self._client, self._semaphore

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def fetch(self, url: str, index: int) -> bytes:
        """The body at `url` (image `index` of the request), or a typed error naming it."""
        import httpx

        client, semaphore = self._ensure()
        timeout = self._settings.download_timeout_s
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                async with semaphore:
                    return await self._fetch(client, url, index)
        except (TimeoutError, httpx.TimeoutException):
            raise DownloadTimeout(
                f"download of {url} did not finish within {timeout:g} s", image=index
            ) from None
        except httpx.HTTPError as error:
            raise InvalidInput(f"could not download {url}: {error}", image=index) from None
        finally:
            self._metrics.stage_seconds.labels("download").observe(time.perf_counter() - started)

    async def _fetch(self, client: httpx.AsyncClient, url: str, index: int) -> bytes:
        import httpx

        for _ in range(self._settings.max_redirects + 1):
            target, host = await self._check(url, index)
            request = client.build_request(
                "GET",
                target,
                headers={"Host": _host_header(httpx.URL(url)), "Accept": "image/*"},
                # TLS must still verify the certificate against the name, not the address.
                extensions={"sni_hostname": host} if target.scheme == "https" else {},
            )
            response = await client.send(request, stream=True)
            try:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise InvalidInput(
                        f"download of {url} answered HTTP {response.status_code}", image=index
                    )
                return await self._read(response, url, index)
            finally:
                await response.aclose()
        raise InvalidInput(
            f"{url} redirected more than {self._settings.max_redirects} times", image=index
        )

    async def _read(self, response: httpx.Response, url: str, index: int) -> bytes:
        limit = self._settings.max_image_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"{url} is {declared} bytes, over the {limit} allowed", image=index)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"{url} is over the {limit} bytes allowed", image=index)
        return bytes(body)

    async def _check(self, url: str, index: int) -> tuple[httpx.URL, str]:
        """The URL to connect to (host replaced by a checked address), and its host name."""
        import httpx

        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as error:
            raise InvalidInput(f"invalid URL {url!r}: {error}", image=index) from None
        if parsed.scheme not in ("http", "https"):
            raise URLRefused(
                f"only http and https URLs are fetched, not {parsed.scheme or 'no scheme'!r}",
                image=index,
            )
        host = parsed.host.lower().rstrip(".")
        if not host:
            raise InvalidInput(f"URL {url!r} has no host", image=index)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = await _resolve(host, port, index)
        for address in addresses:
            reason = why_refused(address)
            if reason is not None and not self._allowlist.permits(host, address):
                raise URLRefused(
                    f"URL {url} refused: {host} resolves to {address}, {reason} "
                    "(permit it with KAKEHASHI_URL_ALLOWLIST)",
                    image=index,
                )
        return parsed.copy_with(host=str(addresses[0])), host


async def _resolve(host: str, port: int, index: int) -> list[IPAddress]:
    try:
        addresses = await resolve(host, port)
    except OSError as error:
        raise InvalidInput(f"cannot resolve host {host!r}: {error}", image=index) from None
    if not addresses:
        raise InvalidInput(f"host {host!r} has no address", image=index)
    return addresses


def _host_header(url: httpx.URL) -> str:
    return host_header(url.scheme, url.host, url.port)

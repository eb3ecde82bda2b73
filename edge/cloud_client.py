"""HTTP transport to the cloud. aiohttp's errors become CloudUnavailable
(retry later) or CloudRefused (the cloud said no), and a 202 CloudPending
(stored, not applied yet: resend soon), at this boundary only."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from .errors import CloudPending, CloudRefused, CloudUnavailable

log = logging.getLogger(__name__)
MSGPACK = "application/x-msgpack"
MAX_RESPONSE = 16 * 1024 * 1024
#: Bounds on the cloud's retry_after_ms hint for a 202 (a missing or odd hint gets the default).
RETRY_AFTER_S = (0.05, 0.25, 10.0)  # min, default, max


class CloudClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(5.0, timeout))
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CloudClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post_envelope(self, path: str, envelope: bytes) -> bytes:
        """POST a signed envelope; return the signed answer's bytes."""
        return await self._request("POST", path, envelope)

    async def get_bytes(self, path: str) -> bytes:
        """GET a msgpack answer (the cloud key chain: each link carries its own signature)."""
        return await self._request("GET", path, None)

    async def _request(self, method: str, path: str, body: bytes | None) -> bytes:
        url = f"{self.base_url}{path}"
        headers = {"Accept": MSGPACK} if body is None else {"Content-Type": MSGPACK, "Accept": MSGPACK}
        try:
            async with self._get_session().request(method, url, data=body, headers=headers) as response:
                length = response.content_length
                if length is not None and length > MAX_RESPONSE:
                    raise CloudUnavailable(f"{url}: answer of {length} bytes is too large")
                answer = await _read_bounded(response, MAX_RESPONSE)
                if answer is None:
                    raise CloudUnavailable(f"{url}: answer is too large")
                if response.status == 200:
                    return answer
                error = _error_of(answer)
                if response.status == 202:
                    raise CloudPending(f"{url}: {error.get('message', 'accepted, not yet applied')}",
                                       _retry_after(error.get("retry_after_ms")))
                if 400 <= response.status < 500:
                    raise CloudRefused(
                        response.status,
                        str(error.get("code", "refused")),
                        str(error.get("message", "")),
                        {k: v for k, v in error.items() if k not in ("code", "message")},
                    )
                raise CloudUnavailable(f"{url}: HTTP {response.status} {error.get('message', '')}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise CloudUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None once it passes ``limit`` (StreamReader.read(n)
    returns what has arrived so far, not n bytes)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after(hint: Any) -> float:
    low, default, high = RETRY_AFTER_S
    if type(hint) is not int:
        return default
    return min(high, max(low, hint / 1000))


def _error_of(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        return error if isinstance(error, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}

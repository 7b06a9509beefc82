"""REST over httpx: the default transport, blocking and asyncio.

Path fields go into the URL, the other fields into the query (GET, DELETE) or the JSON body
(POST, PATCH), exactly as the `google.api.http` bindings say. Failures are read from SPEC's
envelope (`error.code`, `error.message`), with `Retry-After` and the `google.rpc` details
(`BadRequest` field violations, `RetryInfo`) the gateway adds.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from ._errors import FieldViolation, RequestTimeout, TransportError, ZimSendError, error_for
from ._transport import AsyncTransport, Request, Transport

__all__ = ["AsyncRestTransport", "RestTransport", "normalize_base_url"]

USER_AGENT = "zimsend-python/0.1"


def normalize_base_url(base_url: str) -> str:
    """`http://host:8080`, `http://host:8080/` and `http://host:8080/v1` all mean the same."""
    url = base_url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    if "://" not in url:
        url = "http://" + url
    return url


def _parts(request: Request) -> tuple[str, str, dict[str, Any] | None, Any]:
    """(method, path, query, json body) of `request`."""
    op = request.operation
    fields = {k: v for k, v in request.fields.items() if v is not None}
    path = op.path
    for name in op.path_fields:
        path = path.replace("{" + name + "}", quote(str(fields.pop(name, "")), safe=""))
    if op.http_method in ("GET", "DELETE"):
        query = {k: _query_value(v) for k, v in fields.items()}
        return op.http_method, path, query, None
    return op.http_method, path, None, fields


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _headers(request: Request) -> dict[str, str]:
    return {"user-agent": USER_AGENT, "accept": "application/json", **request.headers}


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> ZimSendError:
    """SPEC's error envelope → the exception of its family."""
    import json

    try:
        data = json.loads(body)
    except ValueError:
        data = None
    code, message, violations, retry_info = "", "", [], None
    if isinstance(data, dict):
        found = data.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        code = str(error.get("code") or "")
        message = str(error.get("message") or data.get("message") or "")
        for detail in data.get("details") or ():
            kind = str(detail.get("@type", ""))
            if kind.endswith("google.rpc.ErrorInfo") and not code:
                code = str(detail.get("reason", ""))
            elif kind.endswith("google.rpc.BadRequest"):
                for v in detail.get("fieldViolations") or detail.get("field_violations") or ():
                    violations.append(FieldViolation(v.get("field", ""), v.get("description", "")))
            elif kind.endswith("google.rpc.RetryInfo"):
                delay = detail.get("retryDelay") or detail.get("retry_delay")
                if isinstance(delay, str) and delay.endswith("s"):
                    retry_info = float(delay[:-1] or 0)
    if not code:
        code = {404: "NOT_FOUND", 429: "RATE_LIMIT_EXCEEDED", 503: "UNAVAILABLE"}.get(
            status, "INVALID_REQUEST" if 400 <= status < 500 else "INTERNAL"
        )
        message = message or body.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
    retry_after = _retry_after(headers.get("retry-after"))
    return error_for(
        code,
        message,
        http_status=status,
        retry_after=retry_after if retry_after is not None else retry_info,
        violations=tuple(violations),
    )


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def _transport_error(exc: httpx.HTTPError) -> ZimSendError:
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout("TIMEOUT", f"no answer in time ({type(exc).__name__})")
    return TransportError("CONNECTION_ERROR", f"{type(exc).__name__}: {exc}")


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise error_from_response(response.status_code, response.headers, response.content)
    try:
        data = response.json()
    except ValueError:
        raise error_for(
            "INTERNAL", "the server answered 200 with a body that is not JSON", http_status=502
        ) from None
    return data if isinstance(data, dict) else {}


class RestTransport(Transport):
    """`base_url` is the REST root (`http://127.0.0.1:8080`, with or without `/v1`).
    `client`: your own `httpx.Client` (proxies, certificates, event hooks); `verify`: a CA
    bundle path or False, for a stack started with `--tls-cert`."""

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.Client | None = None,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self._owned = client is None
        self._client = client or httpx.Client(verify=verify, transport=transport)

    def _build(self, request: Request) -> httpx.Request:
        method, path, query, body = _parts(request)
        return self._client.build_request(
            method,
            self.base_url + path,
            params=query,
            json=body,
            headers=_headers(request),
            timeout=request.timeout,
        )

    def handle(self, request: Request) -> dict[str, Any]:
        try:
            response = self._client.send(self._build(request))
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        return _json(response)

    def stream(self, request: Request) -> Iterator[bytes]:
        try:
            response = self._client.send(self._build(request), stream=True)
            try:
                if response.status_code != 200:
                    response.read()
                    raise error_from_response(
                        response.status_code, response.headers, response.content
                    )
                yield from response.iter_bytes()
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc

    def close(self) -> None:
        if self._owned:
            self._client.close()


class AsyncRestTransport(AsyncTransport):
    """The asyncio twin of `RestTransport` (httpx.AsyncClient)."""

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        verify: bool | str = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self._owned = client is None
        self._client = client or httpx.AsyncClient(verify=verify, transport=transport)

    def _build(self, request: Request) -> httpx.Request:
        method, path, query, body = _parts(request)
        return self._client.build_request(
            method,
            self.base_url + path,
            params=query,
            json=body,
            headers=_headers(request),
            timeout=request.timeout,
        )

    async def handle(self, request: Request) -> dict[str, Any]:
        try:
            response = await self._client.send(self._build(request))
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        return _json(response)

    async def stream(self, request: Request) -> AsyncIterator[bytes]:
        try:
            response = await self._client.send(self._build(request), stream=True)
            try:
                if response.status_code != 200:
                    await response.aread()
                    raise error_from_response(
                        response.status_code, response.headers, response.content
                    )
                async for chunk in response.aiter_bytes():
                    yield chunk
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

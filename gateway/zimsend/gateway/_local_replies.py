"""Envoy's own errors (replies the server never saw) as the JSON error envelope for REST
callers, plain gRPC status for gRPC callers."""

from __future__ import annotations

from typing import Any

from zimsend.gateway._filters import rate_limit_message
from zimsend.gateway._settings import (
    _REASON,
    ERROR_CODE_HEADER,
    ERROR_DOMAIN,
    REST_MARKER_HEADER,
    UNREADABLE_MESSAGE,
    GatewayConfig,
    _kib,
)


def _local_reply_config(config: GatewayConfig) -> dict[str, Any]:
    """Mappers for replies Envoy makes itself (the server never saw the request).

    Each mapper applies only to REST requests (the Lua filter marks them before the
    transcoder rewrites their content type to application/grpc); native gRPC and gRPC-Web
    keep Envoy's plain gRPC status. The Lua filter then completes what local_reply_config
    cannot write (the ErrorInfo detail) on the way out.
    """
    invalid = _REASON.Name(_REASON.INVALID_REQUEST)

    def when(status: int, rest: bool) -> dict[str, Any]:
        marker = {"name": REST_MARKER_HEADER, "present_match": True, "invert_match": not rest}
        return {
            "and_filter": {"filters": [{"header_filter": {"header": marker}}, status_is(status)]}
        }

    def status_is(status: int) -> dict[str, Any]:
        return {
            "status_code_filter": {
                "comparison": {
                    "op": "EQ",
                    "value": {"default_value": status, "runtime_key": f"lr_{status}"},
                }
            }
        }

    def unread(status: int) -> dict[str, Any]:
        # Refused before any filter ran (the codec, or Envoy's own method checks): no marker
        # and no content type — a gRPC request always has one — so never a gRPC caller's.
        absent = {"present_match": True, "invert_match": True}
        return {
            "and_filter": {
                "filters": [
                    {"header_filter": {"header": {"name": REST_MARKER_HEADER, **absent}}},
                    {"header_filter": {"header": {"name": "content-type", **absent}}},
                    status_is(status),
                ]
            }
        }

    def rest(status: int, code: str, grpc_code: int, message: str) -> dict[str, Any]:
        return {
            "filter": when(status, rest=True),
            "body_format_override": _envelope_format(code, grpc_code, message),
        }

    def grpc(status: int, message: str) -> dict[str, Any]:
        # Native gRPC: the text becomes grpc-message; it must stay plain text.
        return {
            "filter": when(status, rest=False),
            "body_format_override": {"text_format_source": {"inline_string": message}},
        }

    def unreadable(status: int, message: str) -> dict[str, Any]:
        # No filter ran, so the Lua filter cannot add the code header on the way out.
        code_header = {"key": ERROR_CODE_HEADER, "value": invalid}
        return {
            "filter": unread(status),
            "headers_to_add": [
                {"header": code_header, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            ],
            "body_format_override": _envelope_format(invalid, 3, message),
        }

    too_large = f"Request body larger than {config.max_request_body_bytes} bytes."
    limited = rate_limit_message(config.rate_limit)
    unavailable = _REASON.Name(_REASON.UNAVAILABLE)
    return {
        "mappers": [
            rest(400, invalid, 3, "%LOCAL_REPLY_BODY%"),
            rest(404, "NOT_FOUND", 5, NO_ENDPOINT_MESSAGE),
            rest(413, invalid, 3, too_large),
            rest(429, _REASON.Name(_REASON.RATE_LIMIT_EXCEEDED), 8, limited),
            rest(500, _REASON.Name(_REASON.INTERNAL), 13, "%LOCAL_REPLY_BODY%"),
            rest(502, unavailable, 14, "%LOCAL_REPLY_BODY%"),
            rest(503, unavailable, 14, "%LOCAL_REPLY_BODY%"),
            rest(504, "DEADLINE_EXCEEDED", 4, "%LOCAL_REPLY_BODY%"),
            grpc(429, limited),
            unreadable(400, UNREADABLE_MESSAGE),
            unreadable(431, headers_too_large_message(config)),
        ]
    }


#: A 404 Envoy answers itself (no route, no transcoder binding): the method and path as the
#: caller sent them (before the transcoder rewrote them), the path without its query.
NO_ENDPOINT_MESSAGE = (
    "No endpoint %REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)% %PATH(NQ)%; the API is described "
    "at /v1/openapi.json."
)


def headers_too_large_message(config: GatewayConfig) -> str:
    """What a caller whose URL and headers are over Envoy's limit is told (431)."""
    return (
        f"Request URL and headers are larger than {_kib(config.max_request_header_bytes)} KB "
        "together; shorten them (long values belong in a JSON body)."
    )


def _envelope_format(code: str, grpc_code: int, message: str) -> dict[str, Any]:
    return {
        "json_format": {
            "success": False,
            "error": {"code": code, "message": message},
            "code": grpc_code,
            "message": message,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": code,
                    "domain": ERROR_DOMAIN,
                }
            ],
        },
        "content_type": "application/json",
    }

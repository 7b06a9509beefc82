"""A gRPC method handler with one behaviour replaced: what the server's interceptors
(`metrics`, `call_gate`, `request_decoding`) each do to the handler they wrap.

grpc's handlers are named tuples at run time (`grpc._utilities.RpcMethodHandler`); its type
stubs declare only the abstract `grpc.RpcMethodHandler`, without `_replace`. This function is
the one place that relies on it.
"""

from __future__ import annotations

from typing import Any

import grpc


def with_behavior(
    handler: grpc.RpcMethodHandler[Any, Any], **behavior: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with the given fields (`unary_unary=...`, `stream_stream=...`) replaced."""
    replaced: grpc.RpcMethodHandler[Any, Any] = handler._replace(**behavior)  # type: ignore[attr-defined]  # a namedtuple at run time
    return replaced

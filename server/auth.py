"""Bearer-token authentication of one gRPC service's calls; other services (health, reflection) stay open."""
from __future__ import annotations

import hmac
from typing import Any, Callable, Sequence

import grpc

from .errors import Failure

HINT = "send the metadata 'authorization: Bearer <token>' (gradserve clients: set_context(token=...) or GRADSERVE_TOKEN)"


def problem(metadata: Sequence[tuple[str, Any]], token: str) -> str | None:
    """Why ``metadata`` does not carry ``token`` as a bearer token, or None when it does (compared in constant time)."""
    values = [v for k, v in metadata if k == "authorization"]
    if not values:
        return f"this server requires a bearer token; {HINT}"
    scheme, _, given = str(values[0]).strip().partition(" ")
    if scheme.lower() != "bearer" or not given:
        return f"the authorization metadata is not of the form 'Bearer <token>'; {HINT}"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "the bearer token is not valid for this server"
    return None


class BearerAuth(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED, without parsing the request, to calls of ``service`` that lack the token."""

    def __init__(self, token: str, service: str, reject: Callable[[str, Failure, grpc.ServicerContext], None]) -> None:
        self._token = token
        self._prefix = f"/{service}/"
        self._reject = reject

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        why = problem(handler_call_details.invocation_metadata, self._token) if method.startswith(self._prefix) else None
        handler = continuation(handler_call_details)
        if why is None or handler is None:
            return handler

        def deny(_request: Any, context: grpc.ServicerContext) -> None:
            self._reject(method, Failure("UNAUTHENTICATED", f"{method}: {why}"), context)

        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        return make(deny, response_serializer=handler.response_serializer)

"""Client for the discovery gateway.

The messages and the ``discovery.v1.Discovery`` stub are generated from the
protos (``discovery.v1.*_pb2``, typed by their ``.pyi`` files); this module is
the thin layer a BFF or a shop's tool needs around them: the API key and
shopper id on every call, a default deadline, and retries of calls the gateway
refused with RESOURCE_EXHAUSTED when its ``retry-after`` says waiting helps.

    from discovery_client import Client
    from discovery.v1 import common_pb2, recommendation_pb2

    with Client("127.0.0.1:50051", api_key=key, user_id="shopper-42") as c:
        page = c.Recommend(recommendation_pb2.RecommendRequest(
            face=recommendation_pb2.FaceContext(face_shape=common_pb2.FACE_SHAPE_OVAL)))
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import grpc

from discovery.v1 import gateway_pb2_grpc

__all__ = ["Client", "retry_after"]


def retry_after(error: grpc.RpcError) -> Optional[float]:
    """The seconds a refusal says to wait (``retry-after``), if it says."""
    for key, value in (error.trailing_metadata() or ()):  # type: ignore[attr-defined]
        if key == "retry-after":
            try:
                seconds = float(value)
            except ValueError:
                return None
            return seconds if seconds >= 0 else None
    return None


class Client:
    """The public API (``discovery.v1.Discovery``) with the journey's defaults.

    Every unary method of the service is an attribute taking the request
    message (and optionally ``timeout=``, ``metadata=``) and returning the
    response message; streams (``Converse``, ``IngestCatalog``,
    ``WatchSyncJob``) go through ``client.stub`` with ``client.metadata()``.
    """

    def __init__(
        self,
        target: str,
        api_key: str,
        user_id: Optional[str] = None,
        *,
        secure: bool = False,
        root_certificates: Optional[bytes] = None,
        timeout: float = 5.0,
        retries: int = 2,
        max_retry_wait: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if secure or root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, creds)
        else:
            self.channel = grpc.insecure_channel(target)
        self.stub = gateway_pb2_grpc.DiscoveryStub(self.channel)
        self.api_key = api_key
        self.user_id = user_id
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep

    def metadata(self) -> list[tuple[str, str]]:
        """The identity every call carries."""
        md = [("x-api-key", self.api_key)]
        if self.user_id:
            md.append(("x-user-id", self.user_id))
        return md

    def call(self, method: Callable[..., Any], request: Any, **kwargs: Any) -> Any:
        """Calls a unary stub method with identity, deadline and retries."""
        kwargs.setdefault("timeout", self.timeout)
        kwargs["metadata"] = self.metadata() + list(kwargs.get("metadata") or ())
        attempt = 0
        while True:
            try:
                return method(request, **kwargs)
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                wait = retry_after(error)
                if (
                    code != grpc.StatusCode.RESOURCE_EXHAUSTED
                    or attempt >= self.retries
                    or wait is None
                    or wait > self.max_retry_wait
                ):
                    raise
                attempt += 1
                self._sleep(wait)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.stub, name)
        return lambda request, **kwargs: self.call(method, request, **kwargs)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

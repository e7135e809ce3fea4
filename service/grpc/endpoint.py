"""Where gRPC listens, and the main process's check that nobody else does (no grpc import here).

Every API server binds the gRPC port with ``SO_REUSEPORT``, as they share the HTTP socket, and the
kernel spreads connections over them. The same option would also let a second hookserve (or anything
else that sets it) share the port silently, so the main process first binds it *without* the option,
before forking: if a listener holds the port, start-up fails with a message instead.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class GrpcEndpoint:
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port`` as grpc's ``add_insecure_port`` takes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def check_port_free(endpoint: GrpcEndpoint) -> None:
    """Raise ``OSError`` naming the port when it cannot be bound (in use, or not allowed)."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a previous run's connections in TIME_WAIT do not count; a listener still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((endpoint.host, endpoint.port))
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"gRPC port {endpoint.address} cannot be bound ({exc.strerror}); set "
                "server.grpc_port (or --grpc-port) to a free port, or null to serve no gRPC",
            ) from None

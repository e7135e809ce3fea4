"""``hookserve`` command line: serve, list models, check a config.

Heavy imports happen inside the commands: ``PROMETHEUS_MULTIPROC_DIR`` must be set before
prometheus_client is first imported, and ``hookserve --help`` should not load torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.app import Server

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
logger = logging.getLogger("hookserve")


def _serve(args: argparse.Namespace) -> int:
    from service.lifecycle import kill_children, prepare_runtime_dirs, remove_runtime_dirs

    # First of all: the multiprocess metrics folder must be set before anything imports prometheus_client.
    runtime_root = prepare_runtime_dirs()
    try:
        return _run_server(args)
    finally:
        kill_children()
        remove_runtime_dirs(runtime_root)


def _run_server(args: argparse.Namespace) -> int:
    from service.config import load_config
    from service.logs import configure_logging

    try:
        config = load_config(args.config)
    except (ValueError, OSError) as exc:
        print(f"invalid config {args.config}:\n{exc}", file=sys.stderr)
        return 2
    server_cfg = config.server
    configure_logging(server_cfg.log_level)
    host = args.host or server_cfg.host
    port = args.port or server_cfg.port
    grpc_port = server_cfg.grpc_port if args.grpc_port is None else args.grpc_port or None
    if grpc_port == port:
        print(f"the gRPC port and the HTTP port must differ (both are {port})", file=sys.stderr)
        return 2
    server_cfg = server_cfg.model_copy(update={"host": host, "grpc_port": grpc_port})
    config = config.model_copy(update={"server": server_cfg})
    server = None
    try:
        from service.app import build_server
        from service.lifecycle import GracefulShutdown
        from service.orphans import forked_children_die_with_parent

        server = build_server(config)
        forked_children_die_with_parent()
        shutdown = GracefulShutdown(
            server.plan.drain,
            server.plan.gates.values(),
            server_cfg.shutdown_grace_s,
            stop=lambda: _stop(server),
        )
        shutdown.install()
        names = ", ".join(m.name for m in config.models)
        logger.info("serving %s on http://%s:%d (metrics at /metrics, docs at /docs)", names, host, port)
        if grpc_port is not None:
            logger.info("serving Open Inference Protocol V2 over gRPC on %s:%d", host, grpc_port)
        server.litserver.run(
            host=host,
            port=port,
            num_api_servers=server_cfg.api_servers,
            log_level=server_cfg.log_level,
            generate_client_file=False,
            access_log=server_cfg.access_log,
        )
        return 0
    except KeyboardInterrupt:
        logger.error("hookserve stopped by a signal during start-up")
        return 1
    except Exception as exc:
        if server is not None and server.plan.drain.draining:
            # A stop was asked for and something it stops went first (e.g. every process of the group got
            # SIGTERM, LitServe's queue manager too): that is still the stop that was asked for.
            logger.info("hookserve stopped (%s during shutdown)", type(exc).__name__)
            return 0
        # Start-up failures: say what; the caller leaves no child behind.
        logger.error("hookserve stopped: %s", exc, exc_info=server_cfg.log_level == "debug")
        return 1


def _stop(server: Server) -> None:
    """End LitServer.run(): supervision first (stopping workers is no crash), then LitServe's shutdown."""
    server.supervisor.stop()
    if not server.litserver.request_stop():
        import _thread

        _thread.interrupt_main()  # still starting: interrupt start-up instead


def _models(args: argparse.Namespace) -> int:
    from models.registry import get_card, list_models

    for name in list_models():
        card = get_card(name)
        synthetic = "  (synthetic weights)" if card.synthetic_weights else ""
        print(f"{name:20s} {card.task:16s} dataset={card.dataset}{synthetic}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from service.config import load_config

    try:
        config = load_config(args.config)
    except (ValueError, OSError) as exc:
        print(f"invalid config {args.config}:\n{exc}", file=sys.stderr)
        return 2
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0


def _grpc_port(text: str) -> int:
    """A port number, or 0 for 'off' (no gRPC)."""
    if text.lower() in ("off", "none", "null"):
        return 0
    port = int(text)
    if not 1024 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port from 1024 to 65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hookserve", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the models of a config over HTTP")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    serve.add_argument("--host", choices=["127.0.0.1", "0.0.0.0", "::"], default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument(
        "--grpc-port", type=_grpc_port, default=None, help="gRPC port (server.grpc_port); 'off': no gRPC"
    )
    serve.set_defaults(run=_serve)
    models = commands.add_parser("models", help="list the registered models")
    models.set_defaults(run=_models)
    check = commands.add_parser("check-config", help="validate a config and print it with defaults filled in")
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    check.set_defaults(run=_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

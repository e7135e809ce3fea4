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
    from service.http.transport import http_protocol
    from service.logs import configure_logging
    from service.repository import startup_plans

    try:
        config = load_config(_config_path(args), server_overrides=_server_overrides(args))
        configure_logging(config.server.log_level)  # before the repository scan, which logs what it skips
        plans, repository = startup_plans(config)
    except (ValueError, OSError) as exc:
        print(f"invalid config {_config_path(args) or 'defaults'}:\n{exc}", file=sys.stderr)
        return 2
    server_cfg = config.server
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

        server = build_server(config, plans, repository)
        forked_children_die_with_parent()
        shutdown = GracefulShutdown(
            server.plan.drain,
            server.plan.shared.gates,
            server_cfg.shutdown_grace_s,
            stop=lambda: _stop(server),
        )
        shutdown.install()
        names = ", ".join(f"{p.name} (versions {', '.join(p.versions)})" for p in plans) or "no model yet"
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
            http=http_protocol(),
        )
        return exit_status(server, None)
    except KeyboardInterrupt:
        logger.error("hookserve stopped by a signal during start-up")
        return 1
    except Exception as exc:
        if server is not None and server.plan.drain.draining:
            return exit_status(server, exc)
        # Start-up failures: say what; the caller leaves no child behind.
        logger.error("hookserve stopped: %s", exc, exc_info=server_cfg.log_level == "debug")
        return 1


def exit_status(server: Server, exc: Exception | None) -> int:
    """The exit status once ``run()`` has ended (raising ``exc``, or not), with a log line saying why.

    Non-zero unless a stop was asked for and nothing went wrong. A requested stop may find LitServe's queue
    manager gone first (every process of the group got SIGTERM): only that is still a clean stop.
    """
    from service.litserve_compat import MANAGER_GONE_ERRORS

    if server.supervisor.fatal is not None:
        logger.error("hookserve stopped: %s", server.supervisor.fatal)
        return 1
    if exc is None:
        return 0
    if server.plan.drain.draining and isinstance(exc, MANAGER_GONE_ERRORS):
        logger.info("hookserve stopped (%s in shutdown: the queue manager went first)", type(exc).__name__)
        return 0
    logger.error("hookserve stopped: %s: %s", type(exc).__name__, exc, exc_info=exc)
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
    from service.repository import startup_plans

    try:
        config = load_config(_config_path(args), server_overrides=_server_overrides(args))
        plans, _ = startup_plans(config)
    except (ValueError, OSError) as exc:
        print(f"invalid config {_config_path(args) or 'defaults'}:\n{exc}", file=sys.stderr)
        return 2
    document = config.model_dump(mode="json")  # with every start-up version of the repository's models
    document["models"] = [c.model_dump(mode="json") for p in plans for c in p.versions.values()]
    print(json.dumps(document, indent=2))
    return 0


def _config_path(args: argparse.Namespace) -> Path | None:
    """``--config``; else the shipped default, unless a repository is given (then server defaults only)."""
    if args.config is not None:
        return args.config
    return None if args.model_repository is not None else DEFAULT_CONFIG


def _server_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The ``server:`` keys the command line sets; they win over the config file and the environment."""
    overrides: dict[str, object] = {}
    if args.model_repository is not None:
        overrides["model_repository"] = str(args.model_repository)
    if args.model_control is not None:
        overrides["model_control"] = args.model_control
    if args.load_model:
        overrides["load_models"] = list(args.load_model)
    return overrides


def _add_repository_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="model repository folder (server.model_repository); without --config, only its models serve",
    )
    parser.add_argument(
        "--model-control",
        choices=["none", "explicit"],
        default=None,
        help="none: every repository model loads at start; explicit: only --load-model ones",
    )
    parser.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="with --model-control explicit: a model to load at start ('*' = all); repeatable",
    )


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
    serve.add_argument("--config", type=Path, default=None, help=f"default: {DEFAULT_CONFIG.name}")
    serve.add_argument("--host", choices=["127.0.0.1", "0.0.0.0", "::"], default=None)
    serve.add_argument("--port", type=int, default=None)
    _add_repository_options(serve)
    serve.add_argument(
        "--grpc-port", type=_grpc_port, default=None, help="gRPC port (server.grpc_port); 'off': no gRPC"
    )
    serve.set_defaults(run=_serve)
    models = commands.add_parser("models", help="list the registered models")
    models.set_defaults(run=_models)
    check = commands.add_parser("check-config", help="validate a config and print it with defaults filled in")
    check.add_argument("--config", type=Path, default=None, help=f"default: {DEFAULT_CONFIG.name}")
    _add_repository_options(check)
    check.set_defaults(run=_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

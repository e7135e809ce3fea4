"""``hookserve`` with named, benchmark-only patches applied first: a fix measured before anyone adopts it.

    python -m benchmarks.patched_serve --patch async-auth serve --config CONFIG --port N

Patches (in the main process before anything forks, so the API servers inherit them):

* ``async-auth`` -- LitServe 0.2.19 registers every spec endpoint with ``Depends(no_auth)``, a plain
  ``def``; FastAPI runs a sync dependency through ``run_in_threadpool``, a thread-pool round trip per
  request in the API server. An ``async def`` no-op is awaited inline instead. (In hookserve the same
  effect comes from giving ``ModelAPI`` an ``async def authorize``, which LitServe's ``setup_auth`` uses.)
"""

from __future__ import annotations

import argparse
import sys


def _async_auth() -> None:
    import litserve.server

    async def no_auth() -> None:
        return None

    litserve.server.no_auth = no_auth


PATCHES = {"async-auth": _async_auth}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", action="append", choices=sorted(PATCHES), default=[])
    args, rest = parser.parse_known_args(argv)
    for name in args.patch:
        PATCHES[name]()
    from service.cli import main as hookserve_main

    return hookserve_main(rest)


if __name__ == "__main__":
    sys.exit(main())

"""``savepoint-operator``: runs kopf with Savepoint's handlers."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import sys

import kopf

from savepoint.kube.kopf_namespaces import serve_namespaces_of_every_listing
from savepoint.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="savepoint-operator", description=__doc__)
    parser.add_argument("--log-format", choices=["json", "plain"], default="json")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    # librados and librbd abort the process on some internal errors: then every Python thread's stack goes
    # to stderr (the pod's log), which tells what the operator was doing.
    faulthandler.enable()
    settings = Settings.from_env()
    kopf.configure(verbose=args.verbose,
                   log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    import savepoint.handlers  # noqa: F401 - registers the handlers
    serve_namespaces_of_every_listing()

    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    kopf.run(
        clusterwide=not settings.watch_namespaces,
        namespaces=settings.watch_namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        liveness_endpoint=liveness,
        memo=kopf.Memo(settings=settings),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

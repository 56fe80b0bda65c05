"""``kubectl-savepoint``: the kubectl plugin (its commands grow with the features)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("kubectl savepoint: no commands yet", file=sys.stderr)
    return 2

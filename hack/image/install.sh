#!/bin/sh
# The install steps of the Savepoint image, shared by the Dockerfile and by
# tests/sandbox/test_image.py (which runs them in a Debian bookworm root
# filesystem made by debootstrap, because no container engine runs on the
# development machines).  One script, so the test exercises exactly what the
# image build runs.
#
#   install.sh system        Debian packages, the non-root user; apt lists removed
#   install.sh app SRC       the operator from the source tree SRC into a venv
#                            made with --system-site-packages (Debian's rbd/rados)
#   install.sh verify        smoke checks; the build fails if one fails
#
# POSIX sh on purpose: a bookworm-slim image has dash, not bash, as /bin/sh.
set -eu

# Everything the operator and the mover need at run time:
# - python3, python3-venv: the interpreter and `python3 -m venv`
# - python3-rbd, python3-rados: librbd/librados bindings (not on PyPI)
# - ceph-common: the `rbd`/`ceph` CLIs and ceph.conf handling, for debugging
#   a mover by hand (`kubectl debug`) with the same libraries
# - rsync, acl, attr: file-share movers (trees with owners, ACLs, xattrs)
# - ca-certificates: TLS to the Kubernetes API server
PACKAGES="python3 python3-venv python3-rbd python3-rados ceph-common rsync acl attr ca-certificates"

PREFIX=/opt/savepoint
VENV="$PREFIX/venv"
# The numeric ids the Helm chart's securityContext uses (runAsUser 65532).
APP_USER=savepoint
APP_UID=65532

system() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    apt-get install -y --no-install-recommends $PACKAGES
    apt-get clean
    rm -rf /var/lib/apt/lists/*
    if ! getent group "$APP_UID" >/dev/null; then
        groupadd --system --gid "$APP_UID" "$APP_USER"
    fi
    if ! getent passwd "$APP_UID" >/dev/null; then
        useradd --system --uid "$APP_UID" --gid "$APP_UID" --home-dir /nonexistent \
            --no-create-home --shell /usr/sbin/nologin "$APP_USER"
    fi
}

app() {
    src=${1:?usage: install.sh app SRC}
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv --system-site-packages "$VENV"
    fi
    # A copy of the source, so the build never writes into SRC (egg-info, build/).
    work=$(mktemp -d)
    cp -a "$src/pyproject.toml" "$src/operator" "$work/"
    "$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --no-warn-script-location "$work"
    rm -rf "$work"
    # No bytecode is written at run time (read-only root filesystem): compile now.
    "$VENV/bin/python" -m compileall -q "$VENV/lib" >/dev/null
}

verify() {
    # What the chart's Deployment and the operator's mover Jobs run, on the PATH
    # the Dockerfile sets.
    PATH="$VENV/bin:$PATH"
    command -v savepoint-operator >/dev/null
    command -v savepoint-mover >/dev/null
    command -v python >/dev/null
    python -c 'import rbd, rados, savepoint, savepoint.main, savepoint.mover.registry as r; r.names()'
    savepoint-operator --help >/dev/null
    for tool in rbd ceph rsync getfacl setfacl getfattr setfattr; do
        command -v "$tool" >/dev/null || { echo "install.sh: $tool missing" >&2; exit 1; }
    done
    getent passwd "$APP_UID" >/dev/null
}

case "${1:-}" in
    system) system ;;
    app) shift; app "$@" ;;
    verify) verify ;;
    *) echo "usage: install.sh system | app SRC | verify" >&2; exit 2 ;;
esac

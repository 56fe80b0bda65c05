# Installs what the sandbox and the test suite need; every step is a no-op
# when its result is already there.  Sourced by hack/sandbox and the Makefile.

# Debian packages: Ceph (mon/osd/mgr, librbd bindings for the system Python),
# nfs-ganesha with the VFS backend, a libnfs client, rsync and ACL/xattr tools
# for the movers, openssl for the sandbox's CA, debootstrap for the image
# test (tests/sandbox/test_image.py builds the image's root filesystem),
# prometheus for its promtool (tests/e2e/test_chart.py checks the chart's
# alert rules and runs them on series with `promtool test rules`; no server runs).
SAVEPOINT_APT_PACKAGES=(
  ceph-mon ceph-osd ceph-mgr ceph-common python3-rbd python3-rados
  nfs-ganesha nfs-ganesha-vfs libnfs-utils
  rsync acl attr openssl python3-venv procps iproute2
  debootstrap prometheus
)

ensure_apt_packages() {
  local missing=()
  local p
  for p in "${SAVEPOINT_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "sandbox: installing Debian packages: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# The project's virtualenv: Debian's python3 with system site packages, so the
# python3-rbd/python3-rados bindings import; the project installed editable.
ensure_venv() {
  local venv="$ROOT/.venv"
  local stamp="$venv/.savepoint-stamp"
  local want
  want=$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  [ -x /usr/bin/python3 ] || { echo "sandbox: /usr/bin/python3 missing (Debian python3)" >&2; return 1; }
  /usr/bin/python3 -c "import venv, ensurepip" 2>/dev/null || ensure_apt_packages
  echo "sandbox: preparing the virtualenv in $venv" >&2
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]" >&2
  echo "$want" > "$stamp"
}

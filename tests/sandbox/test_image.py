"""The container image, proved without a container engine.

``hack/image/rootfs build`` interprets the Dockerfile: ``FROM
debian:bookworm-slim`` becomes a ``debootstrap --variant=minbase bookworm``
tree (from Debian's mirror), and every ``COPY``/``RUN`` is carried out in it
with ``chroot`` as ``docker build`` would, running the same
``hack/image/install.sh``. The tree is cached under ``~/.cache/savepoint/image``
(about 80 s cold, a few seconds warm). These tests then run the image's
commands in that tree as the image's ``USER`` with its ``ENV`` and ``WORKDIR``:

- every Debian package the image installs exists in bookworm and is installed,
  and every command the build and the movers run comes from a Debian package;
- the operator's entry point starts (``--help``), Debian's ``rbd``/``rados``
  import through the venv's system site packages;
- the exact command and environment of the operator's mover Job
  (``movers.build_job``) runs a real mover action in the tree, and the
  ``rbd-copy`` mover copies an image in the sandbox's Ceph with the image's
  librbd, as the non-root user;
- rsync in the image keeps ACLs, xattrs and hard links; the user cannot
  change the installed code; apt lists are gone.

Not proved here: that ``docker build`` itself accepts the Dockerfile (no
engine; hadolint in tests/unit/test_dockerfile.py lints it), the image's size
and layers, that a kubelet runs it (the pod runner ignores images), and the
differences between debootstrap's minbase and Docker's bookworm-slim (slim
also drops docs and man pages).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOTFS = ROOT / "hack" / "image" / "rootfs"
INSTALL = ROOT / "hack" / "image" / "install.sh"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="building the root filesystem needs root (chroot, mount)")


def _rootfs_module() -> Any:
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("savepoint_rootfs", str(ROOTFS))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module
    loader.exec_module(module)
    return module


rootfs = _rootfs_module()


@pytest.fixture(scope="module")
def image() -> Iterator[dict[str, Any]]:
    """The built tree and its config (ENV, USER, WORKDIR, ENTRYPOINT), built or refreshed now.

    Held with a shared lock while the tests use it: another session's build
    (which takes the lock exclusively) waits until they are done.
    """
    import fcntl

    out = subprocess.run([str(ROOTFS), "build"], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    with open(rootfs.cache_dir() / "lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        cfg = rootfs.image_config()
        assert cfg["tree"] == out.stdout.strip().splitlines()[-1]
        yield cfg


def run(argv: list[str], env: dict[str, str] | None = None, user: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = rootfs.run_as_image(argv, env, user, capture_output=True, timeout=300)
    if check:
        assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def tree_path(image: dict[str, Any], path: str) -> Path:
    return Path(image["tree"] + path)


def packages() -> list[str]:
    m = re.search(r'^PACKAGES="([^"]+)"', INSTALL.read_text(), re.MULTILINE)
    assert m, "install.sh has no PACKAGES line"
    return m.group(1).split()


# --- Debian packages and commands ------------------------------------------------------------


def test_every_package_is_in_bookworm_and_installed(image: dict[str, Any]) -> None:
    names = packages()
    assert {"python3-rbd", "python3-rados", "ceph-common", "rsync", "acl", "attr"} <= set(names)
    # The image's own apt and sources (bookworm, -updates, -security), with package lists in a
    # private directory (the tree keeps none): the candidate and the installed version.
    lists = f"/tmp/apt-lists-{uuid.uuid4().hex[:8]}"
    opt = f"-o Dir::State::Lists={lists}"
    listed = run(["sh", "-euc", f"mkdir -p {lists}/partial; apt-get {opt} update -qq >/dev/null; "
                  f"apt-cache {opt} policy {' '.join(names)}; rm -rf {lists}"], user="0")
    for name in names:
        block = re.search(rf"^{re.escape(name)}:\n  Installed: (\S+)\n  Candidate: (\S+)", listed.stdout, re.MULTILINE)
        assert block, f"{name} is not in the image's bookworm sources:\n{listed.stdout}"
        installed, candidate = block.groups()
        assert installed != "(none)", f"{name} is not installed in the image"
        assert installed == candidate, f"{name}: installed {installed}, bookworm has {candidate}"
    sources = tree_path(image, "/etc/apt/sources.list.d/debian.sources").read_text()
    assert "Suites: bookworm bookworm-updates" in sources and "Suites: bookworm-security" in sources, sources


def test_every_command_comes_from_a_debian_package(image: dict[str, Any]) -> None:
    """What install.sh runs, what verify checks and what movers run: each is a file some package owns."""
    commands = ["sh", "apt-get", "getent", "groupadd", "useradd", "mktemp", "cp", "rm", "python3",
                "rbd", "ceph", "rsync", "getfacl", "setfacl", "getfattr", "setfattr"]
    script = INSTALL.read_text()
    for name in commands:
        if name != "sh":
            assert re.search(rf"\b{re.escape(name)}\b", script), f"install.sh no longer uses {name}: update the list"
    probe = ('for c in "$@"; do p=$(command -v "$c") || { echo "MISSING $c"; continue; }; '
             'r=$(readlink -f "$p"); '
             'o=$(dpkg -S "$p" 2>/dev/null || dpkg -S "$r" 2>/dev/null || dpkg -S "${r#/usr}" 2>/dev/null) '
             '|| { echo "UNOWNED $c $p"; continue; }; echo "OK $c ${o%%:*}"; done')
    out = run(["sh", "-c", probe, "probe", *commands], user="0").stdout
    bad = [line for line in out.splitlines() if not line.startswith("OK ")]
    assert not bad, out
    owners = dict(line.split()[1:3] for line in out.splitlines())
    assert owners["rbd"] == "ceph-common" and owners["rsync"] == "rsync" and owners["setfacl"] == "acl"
    assert owners["setfattr"] == "attr"


def test_apt_lists_and_caches_are_removed(image: dict[str, Any]) -> None:
    lists = [p.name for p in tree_path(image, "/var/lib/apt/lists").glob("*") if p.is_file()]
    assert lists == [] or lists == ["lock"], lists
    debs = list(tree_path(image, "/var/cache/apt/archives").glob("*.deb"))
    assert debs == []
    assert not tree_path(image, rootfs.BUILD_CA).exists(), "the build's CA bundle must not stay in the image"


# --- the operator and its Python -------------------------------------------------------------


def test_image_user_is_the_charts_non_root_user(image: dict[str, Any]) -> None:
    out = run(["id"]).stdout
    assert out.startswith("uid=65532(savepoint) gid=65532(savepoint)"), out
    assert image["user"] == "65532:65532"
    passwd = tree_path(image, "/etc/passwd").read_text()
    assert re.search(r"^savepoint:x:65532:65532:.*:/usr/sbin/nologin$", passwd, re.MULTILINE)


def test_operator_entrypoint_starts(image: dict[str, Any]) -> None:
    assert image["entrypoint"] == ["savepoint-operator"]
    out = run([*image["entrypoint"], "--help"]).stdout
    assert out.startswith("usage: savepoint-operator"), out
    assert "--log-format" in out


def test_debian_rbd_and_rados_import_through_the_venv(image: dict[str, Any]) -> None:
    code = ("import json, sys, rbd, rados, savepoint, kopf; "
            "print(json.dumps({'exe': sys.executable, 'prefix': sys.prefix, 'rbd': rbd.__file__, "
            "'rados': rados.__file__, 'savepoint': savepoint.__file__, 'kopf': kopf.__file__, "
            "'librados': str(rados.Rados().version())}))")
    info = json.loads(run(["python", "-c", code]).stdout)
    assert info["exe"] == "/opt/savepoint/venv/bin/python", "`python` on the image's PATH must be the venv's"
    assert info["rbd"].startswith("/usr/lib/python3/dist-packages/"), info
    assert info["rados"].startswith("/usr/lib/python3/dist-packages/"), info
    assert info["savepoint"].startswith("/opt/savepoint/venv/lib/"), info
    assert info["kopf"].startswith("/opt/savepoint/venv/lib/"), info
    assert info["librados"].startswith("3."), info  # librados API version of Debian's ceph 16
    cfg = tree_path(image, "/opt/savepoint/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg


def test_installed_code_is_not_writable_by_the_image_user(image: dict[str, Any]) -> None:
    probe = run(["sh", "-c", "touch /opt/savepoint/venv/bin/x 2>&1; touch \"$(python -c "
                 "'import savepoint,os;print(os.path.dirname(savepoint.__file__))')/x\" 2>&1; true"])
    assert probe.stdout.count("Permission denied") == 2, probe.stdout
    owned = subprocess.run(["find", image["tree"] + "/opt/savepoint", "-uid", "65532"], capture_output=True, text=True)
    assert owned.stdout == ""


def test_installed_package_is_this_checkout(image: dict[str, Any]) -> None:
    """The cached tree was refreshed: the image's savepoint modules equal the checkout's."""
    site = run(["python", "-c", "import savepoint,os;print(os.path.dirname(savepoint.__file__))"]).stdout.strip()
    for module in ("main.py", "engine/movers.py", "mover/__main__.py", "api/reasons.py"):
        here = (ROOT / "operator" / module).read_bytes()
        there = tree_path(image, f"{site}/{module}").read_bytes()
        assert hashlib.sha256(here).digest() == hashlib.sha256(there).digest(), module


# --- the mover, as the operator's Job runs it --------------------------------------------------


def mover_container(request: Any, ceph_secret: str | None = None) -> dict[str, Any]:
    from savepoint.engine import movers
    from savepoint.kube import k8s
    from savepoint.settings import Settings

    owner = k8s.Owner(kind="ShareBackup", namespace="ns", name="b", uid=str(uuid.uuid4()))
    job = movers.build_job(owner, "data", request, Settings(), deadline_seconds=600, ceph_secret=ceph_secret)
    return job["spec"]["template"]["spec"]["containers"][0]


def container_env(container: dict[str, Any], secret: dict[str, str] | None = None) -> dict[str, str]:
    """The container's env as a kubelet would resolve it (secretKeyRef from ``secret``).

    The owner variables are dropped: progress reports into a CR are the end-to-end
    tests' business, the image test has no API server to report to.
    """
    env: dict[str, str] = {}
    for var in container["env"]:
        if var["name"].startswith("SAVEPOINT_OWNER_"):
            continue
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = (secret or {})[var["valueFrom"]["secretKeyRef"]["key"]]
    return env


def test_mover_job_command_runs_a_mover_action(image: dict[str, Any], tmp_path: Path) -> None:
    from savepoint.mover.checksum import checksum_tree
    from savepoint.mover.registry import ActionContext
    from savepoint.mover.request import MoverRequest

    work = Path(f"/tmp/savepoint-image-test-{uuid.uuid4().hex[:8]}")
    data = tree_path(image, f"{work}/data")
    data.mkdir(parents=True)
    try:
        (data / "a.txt").write_text("savepoint\n")
        (data / "dir").mkdir()
        (data / "dir" / "b.bin").write_bytes(os.urandom(100_000))
        for p in (data.parent, data, data / "dir", data / "a.txt", data / "dir" / "b.bin"):
            os.chown(p, 65532, 65532)
        request = MoverRequest(action="checksum-tree", params={"path": f"{work}/data"})
        container = mover_container(request)
        assert container["command"] == ["python", "-m", "savepoint.mover"]
        env = dict(container_env(container), SAVEPOINT_TERMINATION_LOG=f"{work}/termination-log")
        run(container["command"], env)
        result = json.loads(tree_path(image, f"{work}/termination-log").read_text())
        expected = checksum_tree({"path": str(data)}, ActionContext(progress=lambda *a, **k: None, ceph=None))
        assert result == {"ok": True, "data": expected}
        # The console script is the same entry point.
        again = run(["savepoint-mover"], env)
        assert json.loads(again.stdout.strip().splitlines()[-1])["data"] == expected
    finally:
        subprocess.run(["rm", "-rf", str(tree_path(image, str(work)))], check=True)


def test_rsync_keeps_acls_xattrs_and_hard_links(image: dict[str, Any]) -> None:
    work = f"/tmp/savepoint-rsync-{uuid.uuid4().hex[:8]}"
    script = f"""
        mkdir -p {work}/src/d && cd {work}
        echo one > src/d/f && ln src/d/f src/link && chmod 640 src/d/f
        setfacl -m u:1234:r src/d/f
        setfattr -n user.savepoint -v kept src/d/f
        rsync -aHAX src/ dst/
        getfacl -cp dst/d/f | grep -qx 'user:1234:r--'
        [ "$(getfattr --only-values -n user.savepoint dst/d/f)" = kept ]
        [ "$(stat -c %i dst/d/f)" = "$(stat -c %i dst/link)" ]
        [ "$(stat -c %a dst/d/f)" = 640 ]
        echo ok
    """
    try:
        out = run(["sh", "-euc", script], user="0", check=False)
        if "Operation not supported" in out.stderr:
            pytest.skip(f"the filesystem under ~/.cache does not support ACLs/xattrs: {out.stderr.strip()}")
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    finally:
        subprocess.run(["rm", "-rf", str(tree_path(image, work))], check=True)


@pytest.fixture
def rbd_images(ceph: Any) -> Iterator[tuple[str, str, bytes]]:
    """A 16 MiB source image with data at two offsets, and a destination name (both removed after)."""
    import rados
    import rbd
    from sandboxlib import ceph as sandbox_ceph

    user, key = sandbox_ceph.csi_credentials(ceph)
    cluster = rados.Rados(rados_id=user, conf={"mon_host": ",".join(sandbox_ceph.monitors(ceph)), "key": key})
    cluster.connect(timeout=10)
    ioctx = cluster.open_ioctx("rbd")
    src, dst = f"image-test-{uuid.uuid4().hex[:8]}", f"image-test-{uuid.uuid4().hex[:8]}"
    payload = os.urandom(4096)
    rbd.RBD().create(ioctx, src, 16 << 20)
    with rbd.Image(ioctx, src) as image:
        image.write(payload, 0)
        image.write(payload, 9 << 20)
    try:
        yield src, dst, payload
    finally:
        for name in (src, dst):
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageNotFound:
                pass
        ioctx.close()
        cluster.shutdown()


def test_mover_copies_rbd_with_the_images_librbd(image: dict[str, Any], ceph: Any,
                                                 rbd_images: tuple[str, str, bytes]) -> None:
    """The rbd-copy mover, as its Job runs it, against the sandbox's Ceph (same network, 127.0.0.1)."""
    import rados
    import rbd
    from sandboxlib import ceph as sandbox_ceph
    from savepoint.mover.request import MoverRequest

    src, dst, payload = rbd_images
    user, key = sandbox_ceph.csi_credentials(ceph)
    secret = {"monitors": ",".join(sandbox_ceph.monitors(ceph)), "userID": user, "userKey": key}
    request = MoverRequest(action="rbd-copy", needs_ceph=True, params={
        "source": {"pool": "rbd", "image": src}, "destination": {"pool": "rbd", "image": dst},
        "create_destination": True})
    container = mover_container(request, ceph_secret="b-ceph")
    work = f"/tmp/savepoint-rbd-{uuid.uuid4().hex[:8]}"
    tree_path(image, work).mkdir()
    os.chown(tree_path(image, work), 65532, 65532)
    try:
        env = dict(container_env(container, secret), SAVEPOINT_TERMINATION_LOG=f"{work}/termination-log")
        run(container["command"], env)
        result = json.loads(tree_path(image, f"{work}/termination-log").read_text())
    finally:
        subprocess.run(["rm", "-rf", str(tree_path(image, work))], check=True)
    assert result["ok"] is True, result
    assert result["data"]["verified"] is True and result["data"]["bytes"] >= 2 * 4096, result
    cluster = rados.Rados(rados_id=user, conf={"mon_host": secret["monitors"], "key": key})
    cluster.connect(timeout=10)
    try:
        ioctx = cluster.open_ioctx("rbd")
        try:
            with rbd.Image(ioctx, dst, read_only=True) as copy:
                assert copy.size() == 16 << 20
                assert copy.read(0, 4096) == payload and copy.read(9 << 20, 4096) == payload
                assert copy.read(4 << 20, 4096) == bytes(4096)
        finally:
            ioctx.close()
    finally:
        cluster.shutdown()

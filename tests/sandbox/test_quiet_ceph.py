"""No librados noise in Savepoint's output (issue: "peer ... is using msgr V1 protocol" on every connection).

librados prints that line (an lderr: neither ``debug_ms`` nor
``err_to_stderr=false`` silences it in Ceph 16, tried) when it reaches an
msgr1 monitor through a plain ``host:port`` on a port other than 6789: it
tries msgr2 first. The fix is at the source: the sandbox publishes its monitor
as ``v1:HOST:PORT`` in ceph-csi's config.json, which is what ``ip:6789`` is on
a real cluster (docs/install.md tells users with msgr1 on another port to
write the same). Tested on the sandbox's real monitor, in fresh processes
whose stderr is captured (librados logs from a thread: ``log_flush_on_exit``
makes sure nothing is lost at exit); the first test is the control (the plain form is
noisy), so the others can fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.storage

ROOT = Path(__file__).resolve().parents[2]
# Any line librados' logger writes: "2026-12-01T21:41:01.234+0000 7f06... -1 --2- ..."
LIBRADOS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+\d{4} [0-9a-f]+ ", re.MULTILINE)

RAW = """
import sys
sys.path.insert(0, {hack!r})
from sandboxlib import ceph, config
import rados
cfg = config.load()
user, key = ceph.csi_credentials(cfg)
c = rados.Rados(rados_id=user, conf={{"mon_host": sys.argv[1], "key": key, "keyring": "", "log_file": "",
                                     "log_flush_on_exit": "true"}})
c.connect(timeout=10)
print(c.get_fsid())
c.shutdown()
"""

SAVEPOINT = """
import sys
sys.path.insert(0, {hack!r})
from sandboxlib import ceph, config
from savepoint.storage.ceph import CephCredentials, cluster_fsid, connect
cfg = config.load()
user, key = ceph.csi_credentials(cfg)
with connect(CephCredentials(monitors=[sys.argv[1]], user_id=user, key=key), conf={{"log_flush_on_exit": "true"}}) as c:
    print(cluster_fsid(c))
"""

DEMO_HELPERS = """
import sys
sys.path.insert(0, {hack!r}); sys.path.insert(0, {tests!r})
from sandboxlib import config
from helpers import volumes
cfg = config.load()
with volumes.cluster(cfg) as c:
    print(c.get_fsid())
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = code.format(hack=str(ROOT / "hack"), tests=str(ROOT / "tests"))
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"[0-9a-f-]{36}\n", out.stdout), out.stdout  # it really connected
    return out


def _plain(ceph) -> str:  # type: ignore[no-untyped-def]
    return f"127.0.0.1:{ceph.ceph_mon_port + 1}"


def test_control_plain_address_on_an_odd_msgr1_port_is_noisy(ceph) -> None:  # type: ignore[no-untyped-def]
    out = _run(RAW, _plain(ceph))
    assert "is using msgr V1 protocol" in out.stderr and LIBRADOS_LINE.search(out.stderr), out.stderr


def test_the_published_monitor_names_its_protocol_and_connects_quietly(ceph) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "hack"))
    from sandboxlib import publish

    configmap = next(m for m in publish.manifests(ceph) if m["kind"] == "ConfigMap")
    monitors = json.loads(configmap["data"]["config.json"])[0]["monitors"]
    assert monitors == [f"v1:127.0.0.1:{ceph.ceph_mon_port + 1}"]
    out = _run(RAW, ",".join(monitors))  # plain librados, no Savepoint settings: quiet by the address alone
    assert out.stderr == "", out.stderr


def test_savepoint_clients_are_quiet_with_the_published_monitor(ceph) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "hack"))
    from sandboxlib import ceph as sandbox_ceph

    out = _run(SAVEPOINT, ",".join(sandbox_ceph.monitors(ceph)))
    assert out.stderr == "", out.stderr


def test_the_demo_and_test_helpers_connect_quietly(ceph) -> None:  # type: ignore[no-untyped-def]
    out = _run(DEMO_HELPERS)
    assert not LIBRADOS_LINE.search(out.stderr), out.stderr

"""``kubectl savepoint`` without a cluster: kubectl's conventions, --dry-run=client, completion, and
running on a Python that has no librados (as on a laptop).

The commands here never reach an API server: the kubeconfig names an address
nothing listens on, so a command that tried to would fail. What needs the
cluster is in tests/e2e/test_plugin.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml
from savepoint.cli import main as cli
from savepoint.kube import resetrequest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "laptop",
        "clusters": [{"name": "nowhere", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "laptop", "context": {"cluster": "nowhere", "user": "me", "namespace": "from-context"}},
                     {"name": "other", "context": {"cluster": "nowhere", "user": "me", "namespace": "other-ns"}}]}))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv", [
    ["-n", "demo", "-o", "yaml", "backup", "data", "--dry-run=client"],
    ["backup", "data", "-n", "demo", "-o", "yaml", "--dry-run=client"],
    ["backup", "-o", "yaml", "data", "--namespace=demo", "--dry-run", "client"],
    ["--namespace", "demo", "backup", "data", "--dry-run=client", "--output=yaml"],
])
def test_kubectl_flags_anywhere_on_the_line(capsys: pytest.CaptureFixture[str], kubeconfig: Path,
                                            argv: list[str]) -> None:
    code, out, err = run(capsys, *argv, "--name", "b1", "--kubeconfig", str(kubeconfig))
    assert code == 0, err
    obj = yaml.safe_load(out)
    assert obj == {"apiVersion": "savepoint.dev/v1alpha1", "kind": "ShareBackup",
                   "metadata": {"name": "b1", "namespace": "demo"},
                   "spec": {"source": {"persistentVolumeClaim": {"name": "data"}}, "incremental": True,
                            "verify": False, "force": False}}


def test_context_and_its_namespace(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    code, out, _ = run(capsys, "revert", "data", "--to", "snap", "--name", "r", "-o", "json", "--dry-run=client",
                       "--kubeconfig", str(kubeconfig))
    assert code == 0 and '"namespace": "from-context"' in out
    code, out, _ = run(capsys, "revert", "data", "--to", "volumesnapshot/nightly", "--context", "other", "-o", "yaml",
                       "--dry-run=client", "--kubeconfig", str(kubeconfig))
    obj = yaml.safe_load(out)
    assert code == 0 and obj["metadata"]["namespace"] == "other-ns"
    assert obj["spec"]["snapshot"] == {"volumeSnapshot": {"name": "nightly"}}
    assert obj["metadata"]["name"].startswith("revert-data-")


def test_dry_run_without_output_says_so(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    code, out, _ = run(capsys, "restore", "monday", "--new-claim", "copy", "--size", "2Gi", "--name", "r",
                       "--dry-run=client", "--kubeconfig", str(kubeconfig))
    assert (code, out) == (0, "sharerestore.savepoint.dev/r created (dry run)\n")
    code, out, _ = run(capsys, "snapshot-image", "disk", "--name", "i", "-o", "name", "--dry-run=client",
                       "--kubeconfig", str(kubeconfig))
    assert (code, out) == (0, "imagesnapshot.savepoint.dev/i\n")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    code, _, err = run(capsys, "restore", "b", "--to-pvc", "a", "--new-claim", "c", "--dry-run=client",
                       "--kubeconfig", str(kubeconfig))
    assert code == 2 and "not both" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["backup", "data", "-o", "table"])
    assert exc.value.code == 2


def test_kinds_are_named_as_kubectl_names_them() -> None:
    for text in ("vrev", "VolumeRevert", "volumereverts", "volumerevert.savepoint.dev", "volumereverts.savepoint.dev"):
        assert cli.kind_of(text) == ("VolumeRevert", "volumereverts")
    assert cli.kind_and_name("sbak/monday", None) == (("ShareBackup", "sharebackups"), "monday")
    with pytest.raises(cli.UsageError, match="unknown kind"):
        cli.kind_of("pods")


def test_version_client_only_needs_no_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "version", "--client")
    assert code == 0 and out.startswith("Plugin version: 0.1.0\nOperator version: unknown: not asked")


def test_completion_script_and_kubectl_plugin_completion(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    code, out, _ = run(capsys, "completion", "bash")
    assert code == 0 and "kubectl-savepoint" in out and "complete " in out
    # kubectl_complete-savepoint, the executable kubectl runs: one candidate a line, then the directive.
    def complete(*words: str) -> list[str]:
        out = subprocess.run([str(ROOT / ".venv" / "bin" / "kubectl_complete-savepoint"), *words],
                             capture_output=True, text=True, env=dict(os.environ, KUBECONFIG=str(kubeconfig)))
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    lines = complete("st")
    assert "status" in lines and lines[-1] == ":4"
    assert {"volumerevert", "vrev"} <= set(complete("status", "v"))
    assert "--dry-run" in complete("backup", "data", "--dry")
    assert {"pvc/", "volumesnapshot/", "sharebackup/"} <= set(complete("reset-state", ""))


def test_reset_requests_are_bounded() -> None:
    request = resetrequest.Request("abc123", force=True)
    assert resetrequest.parse_request(request.to_annotation()) == request
    for bad in ("x", '{"id": "a b"}', '{"id": "a", "force": "yes"}', '{"id": "a", "extra": 1}', "{" + " " * 300 + "}"):
        with pytest.raises(resetrequest.BadRequest):
            resetrequest.parse_request(bad)
    result = resetrequest.Result("abc123", True, "m" * 5000, cleared="error")
    back = resetrequest.parse_result(result.to_annotation())
    assert back is not None and back.cleared == "error" and len(back.message) == resetrequest.MAX_MESSAGE
    assert resetrequest.parse_result("not json") is None


CEPH_BINDINGS = ("rados", "rbd", "cephfs", "rgw", "ceph_")


def no_rados_python(tmp_path: Path) -> Path:
    """A Python like a laptop's: this project's packages and Debian's others, but no Ceph bindings.

    A venv without system site packages, given our venv's site-packages and a
    copy (symlinks) of Debian's dist-packages that leaves out rados, rbd, cephfs and rgw.
    """
    env_dir = tmp_path / "laptop-venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False, symlinks=True).create(env_dir)
    ours = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    debian = tmp_path / "dist-packages-without-ceph"
    debian.mkdir()
    for entry in Path("/usr/lib/python3/dist-packages").iterdir():
        if not entry.name.lower().startswith(CEPH_BINDINGS):
            (debian / entry.name).symlink_to(entry)
    site_dir = next((env_dir / "lib").glob("python3*/site-packages"))
    # addsitedir also runs our venv's .pth files (the editable install of savepoint).
    (site_dir / "project.pth").write_text(f"import site; site.addsitedir({str(ours)!r}); "
                                          f"site.addsitedir({str(debian)!r})\n")
    return env_dir / "bin" / "python"


def test_the_plugin_runs_without_librados(tmp_path: Path, kubeconfig: Path) -> None:
    python = no_rados_python(tmp_path)
    probe = subprocess.run([python, "-c", "import rados"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'rados'" in probe.stderr  # the premise holds
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for argv in (["--help"], ["version", "--client"], ["reset-state", "--help"],
                 ["backup", "data", "--dry-run=client", "-o", "yaml", "--kubeconfig", str(kubeconfig)]):
        out = subprocess.run([python, "-m", "savepoint.cli", *argv], capture_output=True, text=True, env=env)
        assert out.returncode == 0, (argv, out.stderr)
    # Importing every module the plugin uses loads no Ceph binding.
    out = subprocess.run([python, "-c", "import sys, savepoint.cli.main, savepoint.cli.backups, savepoint.kube.resetrequest; "
                                        "savepoint.cli.main.parser(); print(sorted(m for m in sys.modules "
                                        "if m in ('rados', 'rbd', 'savepoint.storage.ceph')))"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_reset_state_help_names_every_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["reset-state", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "pvc/NAME, volumesnapshot/NAME or sharebackup/NAME" in text


def test_logs_help_says_what_it_can_show(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["logs", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "kubelet log API" in text and "termination message" in text and "never shows more" in text


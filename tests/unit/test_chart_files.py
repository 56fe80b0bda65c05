"""The Helm chart's files, without rendering: CRDs in sync with the generated
ones, README's values table up to date and complete, no wildcard in RBAC.

(Rendering, kubeconform, installing: tests/e2e/test_chart.py.)
"""

from __future__ import annotations

import filecmp
import importlib.machinery
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "savepoint"


def _load_script(name: str) -> ModuleType:
    """A hack/ script without .py suffix, imported as a module."""
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(ROOT / "hack" / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


chart_readme = _load_script("chart-readme")


# --- CRDs ---------------------------------------------------------------------------------


def test_chart_crd_templates_are_the_generated_crds() -> None:
    """templates/crds/ holds exactly crds/, each wrapped in crds.install with the keep policy; nothing else changed."""
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    carried = sorted(p.name for p in (CHART / "templates" / "crds").glob("*.yaml"))
    assert generated, "crds/ is empty: run make crds"
    assert carried == generated, "charts/savepoint/templates/crds/ has other files than crds/: run hack/sync-chart-crds"
    assert not (CHART / "crds").exists(), "a chart crds/ directory is never upgraded by Helm: the CRDs are templates"
    for name in generated:
        text = (CHART / "templates" / "crds" / name).read_text()
        lines = text.splitlines()
        assert lines[1] == "{{- if .Values.crds.install }}" and lines[-1] == "{{- end }}", name
        assert "helm.sh/resource-policy: keep" in text and "{{- if .Values.crds.keep }}" in text, name
        plain = yaml.safe_load("\n".join(line for line in lines if "{{" not in line))
        source = yaml.safe_load((ROOT / "crds" / name).read_text())
        assert plain["metadata"] == {"name": source["metadata"]["name"], "labels": None,
                                     "annotations": {"helm.sh/resource-policy": "keep"}}, name
        assert {k: v for k, v in plain.items() if k != "metadata"} == {
            k: v for k, v in source.items() if k != "metadata"}, f"{name}: differs from crds/{name}"


def test_sync_script_refuses_what_helm_would_template(tmp_path: Path) -> None:
    sync = _load_script("sync-chart-crds")
    crd = tmp_path / "x.yaml"
    crd.write_text("apiVersion: v1\nkind: CustomResourceDefinition\nmetadata:\n  name: x\nspec:\n"
                   "  rule: \"{{ self }}\"\n")
    with pytest.raises(sync.SyncError, match="template"):
        sync.template(crd)
    crd.write_text("apiVersion: v1\nkind: CustomResourceDefinition\nmetadata:\n  name: x\n  labels: {a: b}\nspec: {}\n")
    with pytest.raises(sync.SyncError, match="only 'name:'"):
        sync.template(crd)


def test_sync_script_check_mode_agrees() -> None:
    out = subprocess.run([str(ROOT / "hack" / "sync-chart-crds"), "--check"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_peering_crds_are_kopfs_group_and_kinds() -> None:
    docs = list(yaml.safe_load_all((CHART / "charts" / "kopf-peering" / "crds" / "peering.yaml").read_text()))
    kinds = {(d["spec"]["group"], d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in docs}
    assert kinds == {("zalando.org", "ClusterKopfPeering", "Cluster"), ("zalando.org", "KopfPeering", "Namespaced")}
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert {"name": "kopf-peering", "version": "1.0.0", "condition": "peering.enabled"} in chart["dependencies"]


# --- values documentation ------------------------------------------------------------------


def test_readme_values_table_is_up_to_date() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "hack" / "chart-readme"), "--check"], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr


def test_every_value_is_documented_and_in_the_schema() -> None:
    values = chart_readme.documented_values((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    paths = {v.path for v in values}
    # Spot checks that the parser found nested keys and skipped list items.
    assert ("mover", "privileged", "allowed") in paths
    assert ("networkPolicy", "dns", "to") in paths
    assert not any("namespaceSelector" in p for p in paths)
    for value in values:
        assert value.description, f"{'.'.join(value.path)} has no comment"
        assert chart_readme.schema_of(schema, value.path) is not None, f"{'.'.join(value.path)} not in the schema"


def test_readme_generator_refuses_an_undocumented_value(tmp_path: Path) -> None:
    (tmp_path / "values.yaml").write_text("# -- documented\na: 1\nb:\n  # -- nested\n  c: true\n")
    (tmp_path / "values.schema.json").write_text(json.dumps(
        {"type": "object", "properties": {"a": {"type": "integer"},
                                          "b": {"type": "object", "properties": {"c": {"type": "boolean"}}}}}))
    (tmp_path / "README.md").write_text(f"x\n{chart_readme.BEGIN}\n{chart_readme.END}\n")
    with pytest.raises(chart_readme.ChartDocError, match=r"values.yaml:3 b: no comment"):
        chart_readme.render(tmp_path)
    (tmp_path / "values.yaml").write_text("# -- documented\na: 1\n# -- a map\nb:\n  # -- nested\n  c: true\n")
    _, fresh = chart_readme.render(tmp_path)
    assert "| `b.c` | boolean | `true` | nested |" in fresh


def test_readme_generator_refuses_a_value_missing_from_the_schema(tmp_path: Path) -> None:
    (tmp_path / "values.yaml").write_text("# -- documented\na: 1\n")
    (tmp_path / "values.schema.json").write_text(json.dumps({"type": "object", "properties": {}}))
    (tmp_path / "README.md").write_text(f"{chart_readme.BEGIN}\n{chart_readme.END}\n")
    with pytest.raises(chart_readme.ChartDocError, match="not described in values.schema.json"):
        chart_readme.render(tmp_path)


def test_values_schema_closes_every_object() -> None:
    """Every object in the schema with properties refuses unknown keys (typos fail)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(where or "/")
            for key, child in node.items():
                if key != "allOf":  # conditions (if/then) describe, they do not define
                    walk(child, f"{where}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{where}/{i}")

    walk(schema, "")
    # extraEnv items are EnvVar objects: only their name is checked.
    assert open_objects == ["/properties/operator/properties/extraEnv/items"]


# --- RBAC --------------------------------------------------------------------------------------

RULE_FIELD = re.compile(r"^\s*-?\s*(apiGroups|resources|verbs|resourceNames|nonResourceURLs)\s*:(?P<rest>.*)$")


def test_no_wildcard_in_rbac_templates() -> None:
    """No "*" verb, resource, group or name in any template (the rendered
    rules are checked again, for every value set, in tests/e2e/test_chart.py)."""
    offenders = []
    for template in sorted((CHART / "templates").glob("*.yaml")):
        lines = template.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if line.lstrip().startswith("#"):
                continue
            match = RULE_FIELD.match(line)
            if match and "*" in match["rest"]:
                offenders.append(f"{template.name}:{number}: {line.strip()}")
            # block-style lists: "- '*'" under a rule field
            if re.match(r"""^\s*-\s*["']?\*["']?\s*$""", line):
                offenders.append(f"{template.name}:{number}: {line.strip()}")
    assert not offenders, "wildcards in RBAC:\n" + "\n".join(offenders)


def test_every_rbac_rule_says_why() -> None:
    """Each group of rules in the operator's ClusterRole opens with a comment saying why."""
    text = (CHART / "templates" / "rbac-operator.yaml").read_text()
    cluster_role = text.split("kind: ClusterRoleBinding")[0]
    lines = cluster_role.splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            above = number - 1
            while lines[above].strip().startswith("{{"):
                above -= 1
            prev = lines[above].strip()
            # A rule continues the comment of the rule group above it when it
            # directly follows that group's last rule (e.g. events, in two APIs).
            assert prev.startswith(("#", "verbs:")), f"rule at line {number + 1} has no comment"

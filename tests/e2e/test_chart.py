"""The Helm chart, rendered and installed for real.

- ``helm lint --strict`` and ``helm template | kubeconform -strict`` for several
  value sets. kubeconform gets local JSON schemas only (it never downloads):
  the built-in kinds come from the OpenAPI document of the exact Kubernetes
  release the sandbox runs (``api/openapi-spec/swagger.json`` of the
  ``k8s.io/kubernetes`` Go module the sandbox is built from), the custom kinds
  from the CRDs themselves (ours, kopf's peering, the VolumeSnapshot CRDs).
  kubeconform embeds no schemas of its own; the one kind without a local
  schema is prometheus-operator's ServiceMonitor (its CRD is in no package
  here), skipped by name with ``-skip`` and checked structurally instead.
- ``values.schema.json`` refuses bad values with a message naming the value.
- The settings the chart renders are exactly what ``operator/settings.py`` reads.
- ``helm install``/``upgrade``/``uninstall`` of a throwaway release on the
  sandbox's API server; its operator pod template passes Pod Security
  "restricted" admission.
- The operator ServiceAccount's permissions, asked of the API server with
  ``kubectl auth can-i --as=...``, are what the chart intends; and a token
  minted for it (``tests/helpers/operator_sa.py``) really acts with them.
- Namespace users bound to Kubernetes' ``view``, ``edit`` and ``admin`` get
  Savepoint's kinds through the chart's aggregated ClusterRoles -- never their
  status, nothing outside their namespace -- and ``userRoles.aggregate=false``
  takes that away (docs/security.md, "Who may do what").
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "savepoint"
sys.path.insert(0, str(ROOT / "tests"))

from helpers.operator_sa import operator_env, operator_kubeconfig  # noqa: E402
from helpers.tenant import make_namespace, forget  # noqa: E402

# The lead's e2e fixture (tests/e2e/conftest.py) installs release "savepoint"
# into savepoint-system; the permission checks below ask about its ServiceAccount.
OPERATOR_NS = "savepoint-system"
OPERATOR_SA = "savepoint-operator"
AS_OPERATOR = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"

# A throwaway release for install/upgrade/uninstall: its own namespace and,
# through the name prefix, its own cluster-scoped objects.
TEST_RELEASE = "sp-chart-test"
TEST_NS = "savepoint-chart-test"
TEST_PREFIX = f"{TEST_RELEASE}-savepoint"

# Value sets rendered and validated; "everything" turns on every optional part.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "sandbox": {"replicas": 0, "rawReferenceNamespaces": ["sp-admin-*"]},
    "minimal": {
        "metrics": {"enabled": False},
        "serviceAccount": {"create": False, "name": "my-operator"},
        "defaultRepository": {"persistentVolumeClaim": {"name": "backups"}},
        "operator": {"logFormat": "plain", "verbose": True},
        "watchNamespaces": ["team-*", "ops"],
    },
    "everything": {
        "replicas": 2,
        "peering": {"enabled": True, "name": "savepoint-leader"},
        "image": {"repository": "registry.example/savepoint", "tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "ceph": {"configMap": {"namespace": "rook-ceph", "name": "rook-ceph-csi-config"},
                 "secret": {"namespace": "savepoint-secrets", "name": "ceph-user"},
                 "imageCopySecret": {"namespace": "savepoint-secrets", "name": "ceph-image-writer"}},
        "rawReferenceNamespaces": ["ops", "admins-*"],
        "defaultRepository": {"nfs": {"server": "nfs.example", "path": "/exports/backups"}},
        "imagePool": "glance-images",
        "imagePools": ["golden"],
        "defaultDeadlineSeconds": 7200,
        "maxDeadlineSeconds": 86400,
        "maxVolumeBytes": 1 << 42,
        "mover": {"image": {"repository": "registry.example/savepoint-mover", "tag": "1.2.4"},
                  "serviceAccountName": "sp-mover", "privileged": {"allowed": True},
                  "concurrency": 8, "namespaceShare": 3, "backoffLimit": 3, "progressIntervalSeconds": 0.5,
                  "startTimeoutSeconds": 30, "nodeSelector": {"pool": "backup"},
                  "resources": {"requests": {"cpu": "100m"}}},
        "metrics": {"port": 9090, "service": {"annotations": {"prometheus.io/scrape": "true"}},
                    "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kube-prometheus"},
                                       "namespace": "monitoring",
                                       "relabelings": [{"targetLabel": "cluster", "replacement": "prod"}],
                                       "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "go_.*",
                                                              "action": "drop"}]},
                    "prometheusRule": {"enabled": True, "namespace": "monitoring", "labels": {"release": "kp"},
                                       "alertLabels": {"team": "storage"}, "stuckAfter": "90m",
                                       "backupMaxAge": "25h"},
                    "grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                         "annotations": {"grafana_folder": "Storage"}}},
        "crds": {"install": True, "keep": False},
        "networkPolicy": {"enabled": True,
                          "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
                          "apiServer": {"cidrs": ["10.96.0.1/32", "192.168.10.0/24"]},
                          "ceph": {"cidrs": ["192.168.20.0/24"]},
                          "extraEgress": [{"ports": [{"port": 2049, "protocol": "TCP"}],
                                           "to": [{"ipBlock": {"cidr": "192.168.30.5/32"}}]}]},
        "operator": {"healthPort": 9091, "podAnnotations": {"a": "b"}, "podLabels": {"team": "storage"},
                     "nodeSelector": {"kubernetes.io/os": "linux"},
                     "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
                     "priorityClassName": "system-cluster-critical",
                     "extraEnv": [{"name": "TZ", "value": "UTC"}],
                     "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}},
        "serviceAccount": {"annotations": {"iam.example/role": "savepoint"}},
    },
}

# Kinds with no local schema, and why: prometheus-operator's CRDs are in none of
# the packages the sandbox has. Rendered only by "everything"; checked by hand
# (_check_service_monitor) and with promtool (test_prometheus_rules_*).
NO_LOCAL_SCHEMA = {"ServiceMonitor", "PrometheusRule"}


# --- running the tools -------------------------------------------------------------------


def _run(argv: list[str | Path], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, input=input, timeout=300, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def tools(apiserver: Any) -> Any:
    """helm, kubeconform and kubectl (built by the sandbox); the API server runs."""
    return apiserver


def helm(cfg: Any, *args: str | Path, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return _run([cfg.bin / "helm", *args, "--kubeconfig", cfg.kubeconfig], check=check, input=input)


def kubectl(cfg: Any, *args: str | Path, check: bool = True, input: str | None = None,
            kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    return _run([cfg.bin / "kubectl", f"--kubeconfig={kubeconfig or cfg.kubeconfig}", *args], check=check, input=input)


def values_file(tmp: Path, name: str, values: dict[str, Any]) -> Path:
    path = tmp / f"values-{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(cfg: Any, values: Path, *extra: str, namespace: str = OPERATOR_NS, release: str = "savepoint") -> str:
    return helm(cfg, "template", release, CHART, "--namespace", namespace, "-f", values, *extra).stdout


def docs_of(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d]


# --- local kubeconform schemas -------------------------------------------------------------


def _go_module_dir(module: str, in_dir: Path) -> Path:
    """Where the Go module cache holds ``module`` at the version ``in_dir``'s go.mod pins."""
    go = shutil.which("go") or "/usr/local/go/bin/go"  # .ci/run puts it on PATH; a shell may not
    out = subprocess.run([go, "mod", "download", "-json", module], cwd=in_dir, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, f"go mod download {module}: {out.stderr}"
    return Path(json.loads(out.stdout)["Dir"])


STRICT_DROP = ("format",)  # Kubernetes' formats (int32, byte, ...) are not JSON Schema's
SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
SCHEMA_ONE = ("items", "additionalProperties", "not")


def _strict(node: Any) -> Any:
    """A Kubernetes schema node → a JSON Schema node that refuses unknown fields.

    Objects with declared properties get ``additionalProperties: false`` (unless
    they preserve unknown fields, as the API server would); int-or-string and
    nullable become JSON Schema types.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in STRICT_DROP:
            continue
        if key in SCHEMA_MAPS:  # name -> schema: the names are data, not keywords
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in SCHEMA_LISTS:
            out[key] = [_strict(sub) for sub in value]
        elif key in SCHEMA_ONE:
            out[key] = [_strict(sub) for sub in value] if isinstance(value, list) else _strict(value)
        else:  # enum, default, required, x-kubernetes-validations, ...: kept as they are
            out[key] = value
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def builtin_schemas(swagger: dict[str, Any], out_dir: Path) -> int:
    """One standalone schema file per built-in kind, with the definitions it
    reaches inlined under ``definitions`` (so its ``#/definitions/...`` refs
    resolve inside the file)."""
    definitions = swagger["definitions"]
    special = {
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        "io.k8s.apimachinery.pkg.api.resource.Quantity": {"anyOf": [{"type": "number"}, {"type": "string"}]},
    }
    strict = {name: special.get(name) or _strict(d) for name, d in definitions.items()}

    def reachable(name: str) -> set[str]:
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            stack: list[Any] = [strict[current]]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    ref = node.get("$ref")
                    if isinstance(ref, str):
                        todo.append(ref.removeprefix("#/definitions/"))
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node)
        return seen

    written = 0
    for name, definition in definitions.items():
        gvks = definition.get("x-kubernetes-group-version-kind") or []
        if len(gvks) != 1:  # shared types (DeleteOptions, WatchEvent) are no resources
            continue
        gvk = gvks[0]
        schema = dict(strict[name])
        schema["definitions"] = {n: strict[n] for n in reachable(name) if n != name}
        # Refs to the root type itself (none today) would need a self-copy.
        schema["definitions"][name] = strict[name]
        _write_schema(out_dir, gvk["group"], gvk["version"], gvk["kind"], schema)
        written += 1
    return written


def crd_schemas(crd_files: list[Path], out_dir: Path) -> list[str]:
    """A schema per served version of each CRD, from its openAPIV3Schema."""
    kinds = []
    for path in crd_files:
        for crd in docs_of(path.read_text()):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                # The API server always accepts apiVersion, kind and metadata.
                props = schema.setdefault("properties", {})
                props.setdefault("apiVersion", {"type": "string"})
                props.setdefault("kind", {"type": "string"})
                props.setdefault("metadata", {"type": "object"})
                _write_schema(out_dir, group, version["name"], kind, schema)
                kinds.append(f"{kind}.{group}/{version['name']}")
    return kinds


def _write_schema(out_dir: Path, group: str, version: str, kind: str, schema: dict[str, Any]) -> None:
    # kubeconform's template fields: .Group is the part of apiVersion before
    # "/" (for the core group "v1" that is the version itself).
    path = out_dir / (group or version) / f"{kind.lower()}_{version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema))


@pytest.fixture(scope="module")
def schema_dir(tools: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kubeconform-schemas")
    kube_module = _go_module_dir("k8s.io/kubernetes", ROOT / "hack" / "kube")
    swagger = json.loads((kube_module / "api" / "openapi-spec" / "swagger.json").read_text())
    assert builtin_schemas(swagger, out) > 100
    snapshot_crds = _go_module_dir("github.com/kubernetes-csi/external-snapshotter/client/v8", ROOT / "hack" / "tools")
    crd_files = [*sorted((ROOT / "crds").glob("*.yaml")), CHART / "charts" / "kopf-peering" / "crds" / "peering.yaml",
                 *sorted((snapshot_crds / "config" / "crd").glob("snapshot.storage.k8s.io_*.yaml"))]
    kinds = crd_schemas(crd_files, out)
    assert {"VolumeRevert.savepoint.dev/v1alpha1", "ClusterKopfPeering.zalando.org/v1",
            "VolumeSnapshot.snapshot.storage.k8s.io/v1"} <= set(kinds)
    return out


def kubeconform(cfg: Any, schemas: Path, manifest: str, *, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """kubeconform -strict on ``manifest`` with only local schemas; its JSON report."""
    argv: list[str | Path] = [cfg.bin / "kubeconform", "-strict", "-summary", "-verbose", "-output", "json",
                              "-schema-location", f"{schemas}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json"]
    if skip:
        argv += ["-skip", ",".join(sorted(skip))]
    out = _run([*argv, "-"], input=manifest, check=False)
    report = json.loads(out.stdout)
    report["returncode"] = out.returncode
    return report


# --- lint and kubeconform -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint(tools: Any, tmp_path: Path, name: str) -> None:
    out = helm(tools, "lint", "--strict", "--with-subcharts", CHART, "-f", values_file(tmp_path, name, VALUE_SETS[name]))
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_chart_passes_kubeconform(tools: Any, schema_dir: Path, tmp_path: Path, name: str) -> None:
    manifest = render(tools, values_file(tmp_path, name, VALUE_SETS[name]), "--include-crds")
    docs = docs_of(manifest)
    skip = {d["kind"] for d in docs} & NO_LOCAL_SCHEMA
    report = kubeconform(tools, schema_dir, manifest, skip=skip)
    bad = [r for r in report["resources"] if r["status"] not in ("statusValid", "statusSkipped")]
    assert report["returncode"] == 0 and not bad, json.dumps(bad, indent=2)
    summary = report["summary"]
    assert summary["valid"] == len(docs) - summary["skipped"]
    assert summary["skipped"] == sum(1 for d in docs if d["kind"] in skip)
    if "ServiceMonitor" in skip:
        _check_service_monitor(docs)


def _check_service_monitor(docs: list[dict[str, Any]]) -> None:
    """The skipped ServiceMonitor, checked by hand: it selects the metrics
    Service by its labels and scrapes its named port."""
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    service = next(d for d in docs if d["kind"] == "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    assert monitor["metadata"]["namespace"] == "monitoring"  # metrics.serviceMonitor.namespace
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"] and "metrics" in port_names
    endpoint = monitor["spec"]["endpoints"][0]
    assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
    assert endpoint["interval"] == "15s" and endpoint["relabelings"] == [{"targetLabel": "cluster",
                                                                         "replacement": "prod"}]


def test_kubeconform_schemas_catch_mistakes(tools: Any, schema_dir: Path) -> None:
    """A check that cannot fail proves nothing: misspelled and mistyped fields,
    in built-in and custom kinds, are all refused by the same schemas."""
    bad: list[dict[str, Any]] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
         "spec": {"replica": 1, "selector": {"matchLabels": {"a": "b"}},
                  "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "x"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": "get"}]},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
         "spec": {"ports": [{"port": "eighty"}]}},
        {"apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": "x"},
         "spec": {"volume": {"persistentVolumeClaim": {"name": "a"}}, "snapshot": {"rbdSnapshot": "s"},
                  "safetySnapshots": True}},
        {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "x"},
         "spec": {"source": {"persistentVolumeClaimName": "a"}, "volumeSnapshotClass": "c"}},
    ]
    report = kubeconform(tools, schema_dir, "\n---\n".join(json.dumps(d) for d in bad))
    statuses = {r["kind"]: r["status"] for r in report["resources"]}
    assert statuses == {d["kind"]: "statusInvalid" for d in bad}, json.dumps(report, indent=2)


def test_examples_and_snapshots_pass_kubeconform(tools: Any, schema_dir: Path) -> None:
    """The CRD-derived schemas accept the repository's examples and the kind of
    VolumeSnapshot objects ceph-csi users have."""
    docs = [d for p in sorted((ROOT / "examples").glob("*.yaml")) for d in docs_of(p.read_text())]
    docs += [
        {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
         "metadata": {"name": "csi-rbdplugin-snapclass"}, "driver": "rbd.csi.ceph.com", "deletionPolicy": "Delete",
         "parameters": {"clusterID": "abc"}},
        {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "nightly"},
         "spec": {"volumeSnapshotClassName": "csi-rbdplugin-snapclass",
                  "source": {"persistentVolumeClaimName": "app-data"}}},
    ]
    report = kubeconform(tools, schema_dir, "\n---\n".join(json.dumps(d) for d in docs))
    assert report["returncode"] == 0, json.dumps(report, indent=2)
    assert report["summary"]["valid"] == len(docs)


# --- what renders ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_rbac_has_no_wildcards(tools: Any, tmp_path: Path, name: str) -> None:
    docs = docs_of(render(tools, values_file(tmp_path, name, VALUE_SETS[name])))
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    assert len(roles) >= 5
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in item for item in rule.get(field, [])), (role["metadata"]["name"], rule)


def test_chart_settings_are_what_the_operator_reads(tools: Any, tmp_path: Path) -> None:
    """Every operator setting is rendered from its value, and parses."""
    from savepoint.settings import Settings

    manifest = render(tools, values_file(tmp_path, "everything", VALUE_SETS["everything"]), namespace="storage-ops")
    env = operator_env(manifest, "storage-ops")
    assert set(env) == {f"SAVEPOINT_{name.upper()}" for name in Settings.model_fields}
    settings = Settings.from_env(env)
    assert settings.model_dump() == {
        "namespace": "storage-ops",
        "ceph_config_map": "rook-ceph/rook-ceph-csi-config",
        "ceph_secret": "savepoint-secrets/ceph-user",
        "raw_reference_namespaces": ["ops", "admins-*"],
        "default_repository": {"nfs": {"server": "nfs.example", "path": "/exports/backups"}},
        "watch_namespaces": [],
        "image_pool": "glance-images",
        "image_pools": ["golden"],
        "image_copy_secret": "savepoint-secrets/ceph-image-writer",
        "mover_image": "registry.example/savepoint-mover:1.2.4",
        "mover_service_account": "sp-mover",
        "mover_privileged_allowed": True,
        "mover_concurrency": 8,
        "mover_namespace_share": 3,
        "mover_backoff_limit": 3,
        "mover_start_timeout": 30.0,
        "mover_pod": {"nodeSelector": {"pool": "backup"}, "resources": {"requests": {"cpu": "100m"}}},
        "mover_progress_interval": 0.5,
        "default_deadline_seconds": 7200,
        "max_volume_bytes": 1 << 42,
        "max_deadline_seconds": 86400,
        "metrics_port": 9090,
        "health_port": 9091,
        "peering": "savepoint-leader",
    }
    # The defaults render the operator's own defaults, except the values the
    # chart decides (its namespace, mover role name).
    defaults = Settings.from_env(operator_env(render(tools, values_file(tmp_path, "defaults", {})), OPERATOR_NS))
    assert defaults == Settings(namespace=OPERATOR_NS, mover_image="ghcr.io/savepoint-dev/savepoint:0.1.0")
    minimal = Settings.from_env(operator_env(render(tools, values_file(tmp_path, "minimal", VALUE_SETS["minimal"])), OPERATOR_NS))
    assert minimal.metrics_port == 0 and minimal.default_repository == {"persistentVolumeClaim": {"name": "backups"}}
    assert minimal.watch_namespaces == ["team-*", "ops"]


def test_rbac_follows_the_names_in_values(tools: Any, tmp_path: Path) -> None:
    docs = docs_of(render(tools, values_file(tmp_path, "everything", VALUE_SETS["everything"]), release="prod",
                          namespace="storage-ops"))
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    operator_role = by_name[("ClusterRole", "prod-savepoint-operator")]
    assert not [r for r in operator_role["rules"] if "bind" in r["verbs"]], "the operator binds no role anywhere"
    assert not [r for r in operator_role["rules"] if set(r["resources"]) & {"jobs", "secrets", "serviceaccounts",
                                                                             "rolebindings"}], \
        "Jobs and Secrets only in its own namespace (a Role), nothing of the kind cluster-wide"
    assert ("ClusterRole", "prod-savepoint-mover") not in by_name
    # The movers' identity lives in the release's namespace, named by the values.
    assert by_name[("ServiceAccount", "sp-mover")]["metadata"]["namespace"] == "storage-ops"
    mover_binding = by_name[("RoleBinding", "prod-savepoint-mover")]
    assert mover_binding["subjects"] == [{"kind": "ServiceAccount", "name": "sp-mover", "namespace": "storage-ops"}]
    assert by_name[("Role", "prod-savepoint-mover")]["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"]}]
    secret_role = by_name[("Role", "prod-savepoint-ceph-secret")]
    assert secret_role["metadata"]["namespace"] == "savepoint-secrets"
    assert secret_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["ceph-user"],
                                     "verbs": ["get"]}]
    assert by_name[("Role", "prod-savepoint-ceph-image-copy-secret")]["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["ceph-image-writer"], "verbs": ["get"]}]
    configmap_role = by_name[("Role", "prod-savepoint-ceph-configmap")]
    assert configmap_role["metadata"]["namespace"] == "rook-ceph"
    assert configmap_role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                                        "resourceNames": ["rook-ceph-csi-config"], "verbs": ["get", "list", "watch"]}]
    peering_rule = {"apiGroups": ["zalando.org"], "resources": ["clusterkopfpeerings", "kopfpeerings"],
                    "verbs": ["get", "list", "watch", "patch"]}
    assert peering_rule in operator_role["rules"]
    assert ("ClusterKopfPeering", "savepoint-leader") in by_name
    # Without peering there is neither the rule nor the object.
    plain = docs_of(render(tools, values_file(tmp_path, "defaults", {})))
    plain_role = next(d for d in plain if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "savepoint-operator")
    assert peering_rule not in plain_role["rules"]
    assert not any(d["kind"] == "ClusterKopfPeering" for d in plain)


def test_user_roles_render_for_view_and_edit_and_switch_off(tools: Any, tmp_path: Path) -> None:
    kinds = ["volumereverts", "sharebackups", "sharerestores", "imagesnapshots"]
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"

    def user_roles(name: str, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
        docs = docs_of(render(tools, values_file(tmp_path, name, values), release="prod"))
        names = ("prod-savepoint-view", "prod-savepoint-edit")
        return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] in names}

    roles = user_roles("defaults", {})
    view, edit = roles["prod-savepoint-view"], roles["prod-savepoint-edit"]
    assert view["rules"] == [{"apiGroups": ["savepoint.dev"], "resources": kinds, "verbs": ["get", "list", "watch"]}]
    assert edit["rules"] == [{"apiGroups": ["savepoint.dev"], "resources": kinds,
                              "verbs": ["get", "list", "watch", "create", "delete", "deletecollection", "patch",
                                        "update"]}]
    assert {k: v for k, v in view["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        f"{aggregate}view": "true", f"{aggregate}edit": "true", f"{aggregate}admin": "true"}
    assert {k: v for k, v in edit["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        f"{aggregate}edit": "true", f"{aggregate}admin": "true"}
    # Switched off: the roles stay (to bind by hand), Kubernetes' roles no longer take them in.
    off = user_roles("no-aggregation", {"userRoles": {"create": True, "aggregate": False}})
    assert set(off) == set(roles) and off["prod-savepoint-edit"]["rules"] == edit["rules"]
    assert not [k for r in off.values() for k in r["metadata"]["labels"] if k.startswith(aggregate)]
    assert user_roles("no-user-roles", {"userRoles": {"create": False, "aggregate": True}}) == {}


def test_operator_pod_is_restricted_by_construction(tools: Any, tmp_path: Path) -> None:
    for name, values in VALUE_SETS.items():
        docs = docs_of(render(tools, values_file(tmp_path, name, values)))
        pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
            assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}


BAD_VALUES = [
    (["--set", "replicas=2"], "at '/peering/enabled': value must be true"),
    (["--set", "peering.enabled=true", "--set-json", 'watchNamespaces=["team-a"]'],
     "at '/watchNamespaces': maxItems: got 1, want 0"),
    (["--set", "replicas=-1"], "at '/replicas': minimum: got -1, want 0"),
    (["--set", "mover.concurrency=0"], "at '/mover/concurrency': minimum: got 0, want 1"),
    (["--set", "mover.progressIntervalSeconds=0"], "at '/mover/progressIntervalSeconds'"),
    (["--set", "ceph.secret.name=Ceph_Secret"], "at '/ceph/secret/name': 'Ceph_Secret' does not match pattern"),
    (["--set", "ceph.configMap.namespace="], "at '/ceph/configMap/namespace'"),
    (["--set", "operator.securityContext.runAsUser=0"], "at '/operator/securityContext/runAsUser': minimum: got 0, want 1"),
    (["--set", "operator.logFormat=xml"], "at '/operator/logFormat': value must be one of 'json', 'plain'"),
    (["--set", "metrics.port=70000"], "at '/metrics/port': maximum"),
    (["--set", "metrics.serviceMonitor.interval=soon"], "at '/metrics/serviceMonitor/interval'"),
    (["--set", "mover.privileged=true"], "at '/mover/privileged': got boolean, want object"),
    (["--set", "mover.privilegedAllowed=true"], "additional properties 'privilegedAllowed' not allowed"),
    (["--set", "replica=1"], "additional properties 'replica' not allowed"),
    (["--set-json", 'rawReferenceNamespaces=["Kube System"]'], "at '/rawReferenceNamespaces/0'"),
    (["--set-json", 'defaultRepository={"nfs":{"server":"nfs.example"}}'], "missing property 'path'"),
    (["--set-json", 'defaultRepository={"nfs":{"server":"a","path":"/b"},"persistentVolumeClaim":{"name":"c"}}'],
     "at '/defaultRepository': 'oneOf' failed"),
    (["--set-json", 'networkPolicy.apiServer.cidrs=["10.0.0.1"]'], "at '/networkPolicy/apiServer/cidrs/0'"),
    (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy'"),
    (["--set", "userRoles.aggregate=yes"], "at '/userRoles/aggregate': got string, want boolean"),
    (["--set", "userRoles.aggregateToAdmin=false"], "additional properties 'aggregateToAdmin' not allowed"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_are_refused(tools: Any, args: list[str], message: str) -> None:
    out = helm(tools, "template", "savepoint", CHART, *args, check=False)
    assert out.returncode != 0, f"accepted: {args}"
    assert "values don't meet the specifications of the schema" in out.stderr
    assert message in out.stderr, out.stderr


# --- CRDs, alerts and the dashboard as the chart renders them ---------------------------------


def test_crds_are_templates_installed_and_kept_by_default(tools: Any, tmp_path: Path) -> None:
    def crds_of(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
        docs = docs_of(render(tools, values_file(tmp_path, "v", values)))
        return {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}

    default = crds_of({})
    generated = {d["metadata"]["name"]: d for p in sorted((ROOT / "crds").glob("*.yaml")) for d in docs_of(p.read_text())}
    assert set(default) == set(generated) and len(default) == 5  # the four actions and SavepointSchedule
    for name, crd in default.items():
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "savepoint"
        assert crd["spec"] == generated[name]["spec"]  # the generated CRD, unchanged
    assert all("annotations" not in c["metadata"] for c in crds_of({"crds": {"install": True, "keep": False}}).values())
    assert crds_of({"crds": {"install": False, "keep": True}}) == {}


PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _rules(tools: Any, tmp_path: Path, values: dict[str, Any]) -> Path:
    docs = docs_of(render(tools, values_file(tmp_path, "rules", values), "--show-only",
                          "templates/prometheusrule.yaml"))
    [rule] = docs
    path = tmp_path / "savepoint-rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    out = _run([PROMTOOL, "check", "rules", path])
    assert "SUCCESS: 5 rules found" in out.stdout, out.stdout
    return path


def test_prometheus_rules_fire_per_namespace(tools: Any, tmp_path: Path) -> None:
    """The chart's alerts, run by promtool on series shaped like the operator's /metrics."""
    rules = _rules(tools, tmp_path, {"metrics": {"enabled": True, "port": 8080, "prometheusRule": {
        "enabled": True, "alertLabels": {"team": "storage"}, "failedWindow": "1h", "stuckAfter": "30m",
        "backupMaxAge": "2h"}}})
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # team-a: one ShareBackup failed at minute 10; team-b: only successes.
                {"series": 'savepoint_operations_total{kind="ShareBackup",result="failed",namespace="team-a"}',
                 "values": "0x9 1x80"},
                {"series": 'savepoint_operations_total{kind="ShareBackup",result="succeeded",namespace="team-b"}',
                 "values": "0+1x90"},
                # a revert in team-a started at t=0 and never ended; team-b's started at minute 50.
                {"series": 'savepoint_action_start_timestamp_seconds{kind="VolumeRevert",name="r1",namespace="team-a"}',
                 "values": "0x90"},
                {"series": 'savepoint_action_start_timestamp_seconds{kind="VolumeRevert",name="r2",namespace="team-b"}',
                 "values": "_x50 3000x40"},
                # the last ShareBackup in team-c succeeded at t=0; team-b's keep succeeding.
                {"series": 'savepoint_last_success_timestamp_seconds{kind="ShareBackup",namespace="team-c"}',
                 "values": "0x200"},
                {"series": 'savepoint_last_success_timestamp_seconds{kind="ShareBackup",namespace="team-b"}',
                 "values": "0+60x200"},
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "SavepointActionsFailed", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "team": "storage", "namespace": "team-a",
                                   "kind": "ShareBackup"},
                    "exp_annotations": {
                        "summary": "Savepoint ShareBackup actions failed in namespace team-a",
                        "description": "1 ShareBackup actions failed in the last 1h. kubectl savepoint -n team-a "
                                       "list; the Ready reason says why (docs/events.md)."}}]},
                {"eval_time": "85m", "alertname": "SavepointActionsFailed", "exp_alerts": []},  # out of the window
                {"eval_time": "20m", "alertname": "SavepointActionStuck", "exp_alerts": []},
                {"eval_time": "45m", "alertname": "SavepointActionStuck", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "team": "storage", "namespace": "team-a",
                                   "kind": "VolumeRevert", "name": "r1"},
                    "exp_annotations": {
                        "summary": "Savepoint VolumeRevert/r1 in namespace team-a has not finished after 30m",
                        "description": "A mover that does not progress, a volume that stays in use or busy, or a "
                                       "state that waits for a reset. kubectl savepoint -n team-a status "
                                       "VolumeRevert r1 shows the reason it waits for."}}]},
                {"eval_time": "100m", "alertname": "SavepointBackupTooOld", "exp_alerts": []},
                {"eval_time": "150m", "alertname": "SavepointBackupTooOld", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "team": "storage", "namespace": "team-c",
                                   "kind": "ShareBackup"},
                    "exp_annotations": {
                        "summary": "No ShareBackup succeeded in namespace team-c for more than 2h",
                        "description": "The last successful ShareBackup in team-c is 2h 30m 0s old. Check what "
                                       "creates them, and kubectl savepoint -n team-c backups list."}}]},
            ],
        }],
    }
    spec = tmp_path / "rules-test.yaml"
    spec.write_text(yaml.safe_dump(tests, sort_keys=False))
    out = _run([PROMTOOL, "test", "rules", spec], check=False)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_prometheus_rules_without_the_backup_age_alert(tools: Any, tmp_path: Path) -> None:
    docs = docs_of(render(tools, values_file(tmp_path, "r", {"metrics": {"enabled": True, "port": 8080,
                                                                          "prometheusRule": {"enabled": True,
                                                                                             "backupMaxAge": ""}}}),
                          "--show-only", "templates/prometheusrule.yaml"))
    assert [r["alert"] for r in docs[0]["spec"]["groups"][0]["rules"]] == ["SavepointActionsFailed",
                                                                          "SavepointActionStuck"]


def test_grafana_dashboard_configmap_is_the_dashboard(tools: Any, tmp_path: Path) -> None:
    docs = docs_of(render(tools, values_file(tmp_path, "everything", VALUE_SETS["everything"])))
    [cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Storage"}
    dashboard = (ROOT / "manifests" / "grafana" / "savepoint-dashboard.json").read_text()
    assert json.loads(cm["data"]["savepoint-dashboard.json"]) == json.loads(dashboard)


def test_make_chart_packages_a_versioned_archive(tools: Any, tmp_path: Path) -> None:
    out = subprocess.run(["make", "-C", str(ROOT), "chart"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, HELM=str(tools.bin / "helm")))
    assert out.returncode == 0, out.stdout + out.stderr
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    archive = ROOT / "dist" / f"savepoint-{version}.tgz"
    assert archive.exists()
    shown = helm(tools, "show", "chart", archive).stdout
    chart = yaml.safe_load(shown)
    assert chart["version"] == version and chart["icon"] and chart["maintainers"]
    crds = yaml.safe_load(chart["annotations"]["artifacthub.io/crds"])
    assert {c["kind"] for c in crds} == {"VolumeRevert", "ShareBackup", "ShareRestore", "ImageSnapshot"}
    examples = yaml.safe_load(chart["annotations"]["artifacthub.io/crdsExamples"])
    assert examples == [yaml.safe_load((ROOT / "examples" / f"{k.lower()}.yaml").read_text())
                        for k in ("VolumeRevert", "ShareBackup", "ShareRestore", "ImageSnapshot")]
    files = _run(["tar", "tzf", archive]).stdout.split()
    assert "savepoint/templates/crds/volumereverts.savepoint.dev.yaml" in files
    assert "savepoint/files/savepoint-dashboard.json" in files


# --- installed on the sandbox ---------------------------------------------------------------


def _exists(cfg: Any, *what: str) -> bool:
    return kubectl(cfg, "get", *what, "--ignore-not-found", "-o", "name", check=False).stdout.strip() != ""


@pytest.fixture
def test_release(kube: Any) -> Iterator[Any]:
    """A clean namespace (Pod Security "restricted" enforced) for the throwaway release."""
    if helm(kube, "status", TEST_RELEASE, "--namespace", TEST_NS, check=False).returncode == 0:
        helm(kube, "uninstall", TEST_RELEASE, "--namespace", TEST_NS, "--wait")
    # A previous run's namespace may still be terminating.
    kubectl(kube, "wait", "--for=delete", f"namespace/{TEST_NS}", "--timeout=120s", check=False)
    kubectl(kube, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": TEST_NS, "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                                  "pod-security.kubernetes.io/enforce-version": "latest"}}}))
    yield kube
    if helm(kube, "status", TEST_RELEASE, "--namespace", TEST_NS, check=False).returncode == 0:
        helm(kube, "uninstall", TEST_RELEASE, "--namespace", TEST_NS)
    kubectl(kube, "delete", "namespace", TEST_NS, "--wait=false", "--ignore-not-found")


def _revision(cfg: Any) -> int:
    status = json.loads(helm(cfg, "status", TEST_RELEASE, "--namespace", TEST_NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    return int(status["version"])


def _deployment_env(cfg: Any) -> dict[str, str]:
    manifest = helm(cfg, "get", "manifest", TEST_RELEASE, "--namespace", TEST_NS).stdout
    return operator_env(manifest, TEST_NS)


def test_install_upgrade_uninstall(test_release: Any, crds: None, tmp_path: Path) -> None:
    cfg = test_release
    chart = CHART
    # crds.install=false: this shared API server's CRDs belong to no release (every session applies
    # crds/); installing and upgrading the CRDs with the chart is test_chart_upgrade.py's, on a private one.
    values = values_file(tmp_path, "install", {"replicas": 0, "peering": {"enabled": True},
                                               "crds": {"install": False, "keep": True}})
    helm(cfg, "install", TEST_RELEASE, chart, "--namespace", TEST_NS, "-f", values)
    assert _revision(cfg) == 1

    # Everything is there, named after the release; the Deployment runs no pod.
    for obj in (f"serviceaccount/{TEST_PREFIX}-operator", f"deployment/{TEST_PREFIX}-operator",
                f"service/{TEST_PREFIX}-metrics", f"role/{TEST_PREFIX}-operator"):
        assert _exists(cfg, "-n", TEST_NS, obj), obj
    for obj in (f"clusterrole/{TEST_PREFIX}-operator",
                f"clusterrole/{TEST_PREFIX}-view", f"clusterrole/{TEST_PREFIX}-edit",
                f"clusterrolebinding/{TEST_PREFIX}-operator", f"clusterkopfpeering/{TEST_PREFIX}",
                "crd/volumereverts.savepoint.dev", "crd/imagesnapshots.savepoint.dev",
                "crd/clusterkopfpeerings.zalando.org"):
        assert _exists(cfg, obj), obj
    assert _exists(cfg, "-n", "ceph-csi", f"role/{TEST_PREFIX}-ceph-secret")
    deployment = json.loads(kubectl(cfg, "-n", TEST_NS, "get", f"deployment/{TEST_PREFIX}-operator", "-o", "json").stdout)
    assert deployment["spec"]["replicas"] == 0
    assert _deployment_env(cfg)["SAVEPOINT_MOVER_SERVICE_ACCOUNT"] == "savepoint-mover"
    assert _exists(cfg, "-n", TEST_NS, "serviceaccount/savepoint-mover")

    # Pod Security "restricted" is enforced in this namespace: the operator's
    # pod template is admitted, and the same pod made privileged is not.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-probe", "namespace": TEST_NS},
           "spec": copy.deepcopy(deployment["spec"]["template"]["spec"])}
    kubectl(cfg, "create", "--dry-run=server", "-f", "-", input=json.dumps(pod))
    container = pod["spec"]["containers"][0]
    container["securityContext"].update(allowPrivilegeEscalation=True, capabilities={"add": ["SYS_ADMIN"]})
    refused = kubectl(cfg, "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr

    # Upgrade: new settings reach the Deployment; switching metrics off removes its Service.
    helm(cfg, "upgrade", TEST_RELEASE, chart, "--namespace", TEST_NS, "--reuse-values",
         "--set", "mover.concurrency=2", "--set", "metrics.enabled=false", "--set-json", 'rawReferenceNamespaces=["ops"]')
    assert _revision(cfg) == 2
    env = _deployment_env(cfg)
    assert env["SAVEPOINT_MOVER_CONCURRENCY"] == "2" and env["SAVEPOINT_METRICS_PORT"] == "0"
    assert env["SAVEPOINT_RAW_REFERENCE_NAMESPACES"] == "ops"
    live = json.loads(kubectl(cfg, "-n", TEST_NS, "get", f"deployment/{TEST_PREFIX}-operator", "-o", "json").stdout)
    live_env = {e["name"]: e.get("value") for e in live["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert live_env["SAVEPOINT_MOVER_CONCURRENCY"] == "2"
    assert not _exists(cfg, "-n", TEST_NS, f"service/{TEST_PREFIX}-metrics")

    # A bad upgrade is refused before it touches anything.
    bad = helm(cfg, "upgrade", TEST_RELEASE, chart, "--namespace", TEST_NS, "--reuse-values",
               "--set", "mover.concurrency=0", check=False)
    assert bad.returncode != 0 and "at '/mover/concurrency'" in bad.stderr
    assert _revision(cfg) == 2

    # Uninstall removes the release's objects, cluster-scoped and in ceph-csi
    # too, and leaves the CRDs (and so every user's CRs) in place.
    helm(cfg, "uninstall", TEST_RELEASE, "--namespace", TEST_NS, "--wait")
    for obj in (f"clusterrole/{TEST_PREFIX}-operator",
                f"clusterrole/{TEST_PREFIX}-view", f"clusterrole/{TEST_PREFIX}-edit",
                f"clusterrolebinding/{TEST_PREFIX}-operator", f"clusterkopfpeering/{TEST_PREFIX}"):
        assert not _exists(cfg, obj), obj
    assert not _exists(cfg, "-n", "ceph-csi", f"role/{TEST_PREFIX}-ceph-secret")
    assert not _exists(cfg, "-n", TEST_NS, f"serviceaccount/{TEST_PREFIX}-operator")
    assert _exists(cfg, "crd/volumereverts.savepoint.dev")


# --- the operator ServiceAccount's permissions ---------------------------------------------------

# (verb, resource, namespace or None for all namespaces / cluster scope); the
# namespaces need not exist: RBAC is asked, not the objects.
ALLOWED = [
    ("watch", "volumereverts.savepoint.dev", None),
    ("list", "sharebackups.savepoint.dev", None),
    ("patch", "imagesnapshots.savepoint.dev", "team-a"),
    ("update", "sharerestores.savepoint.dev", "team-a"),
    ("patch", "volumereverts.savepoint.dev/status", "team-a"),
    ("update", "sharebackups.savepoint.dev/status", "team-b"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("create", "events", "team-a"),
    ("patch", "events.events.k8s.io", "team-b"),
    ("list", "namespaces", None),
    ("update", "persistentvolumeclaims", "team-a"),
    ("create", "persistentvolumeclaims", "team-b"),
    ("create", "persistentvolumes", None),
    ("delete", "persistentvolumes", None),
    ("list", "pods", None),
    ("list", "volumeattachments.storage.k8s.io", None),
    ("get", "storageclasses.storage.k8s.io", None),
    ("list", "volumesnapshots.snapshot.storage.k8s.io", "team-a"),
    ("patch", "volumesnapshotcontents.snapshot.storage.k8s.io", None),
    ("get", "volumesnapshotclasses.snapshot.storage.k8s.io/csi-rbdplugin-snapclass", None),
    ("create", "jobs.batch", OPERATOR_NS),  # every mover runs in the operator's own namespace
    ("delete", "jobs.batch", OPERATOR_NS),
    ("watch", "jobs.batch", OPERATOR_NS),
    ("create", "secrets", OPERATOR_NS),
    ("delete", "secrets", OPERATOR_NS),
    ("create", "configmaps", OPERATOR_NS),
    ("get", "configmaps", OPERATOR_NS),
    ("list", "events", OPERATOR_NS),
    ("get", "secrets/csi-rbd-secret", "ceph-csi"),
    ("get", "configmaps/ceph-csi-config", "ceph-csi"),
    ("list", "resourcequotas", "team-a"),
    ("create", "leases.coordination.k8s.io", OPERATOR_NS),
    ("update", "leases.coordination.k8s.io", OPERATOR_NS),
    # SavepointSchedules (rbac-schedules.yaml): the schedules themselves, and the children they make and prune.
    ("watch", "savepointschedules.savepoint.dev", None),
    ("patch", "savepointschedules.savepoint.dev/status", "team-a"),
    ("create", "sharebackups.savepoint.dev", "team-a"),
    ("delete", "sharebackups.savepoint.dev", "team-a"),
    ("create", "imagesnapshots.savepoint.dev", "team-a"),
    ("delete", "imagesnapshots.savepoint.dev", "team-a"),
    ("create", "volumesnapshots.snapshot.storage.k8s.io", "team-a"),
    ("delete", "volumesnapshots.snapshot.storage.k8s.io", "team-a"),
]

FORBIDDEN = [
    ("delete", "persistentvolumeclaims", "team-a"),  # never delete a user's claim
    ("list", "secrets", "team-a"),
    ("list", "secrets", "ceph-csi"),
    ("watch", "secrets", None),
    ("get", "secrets/default-token", "team-a"),  # only ceph-csi's one Secret is readable
    ("get", "secrets/other-secret", "ceph-csi"),
    ("get", "secrets/csi-rbd-secret", "team-a"),  # the name is only allowed in ceph-csi
    ("get", "configmaps/kube-root-ca.crt", "team-a"),
    ("list", "configmaps", "ceph-csi"),  # list only with the one name (field selector)
    ("create", "clusterroles.rbac.authorization.k8s.io", None),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
    ("bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin", None),
    ("bind", "clusterroles.rbac.authorization.k8s.io/edit", None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("create", "roles.rbac.authorization.k8s.io", "team-a"),
    ("delete", "rolebindings.rbac.authorization.k8s.io", "team-a"),
    ("get", "serviceaccounts/default", "team-a"),
    ("create", "serviceaccounts/token", "team-a"),  # cannot mint tokens for what it creates
    ("create", "pods", "team-a"),  # pods only through Jobs
    ("create", "pods/exec", "team-a"),
    ("delete", "pods", "team-a"),
    ("create", "volumereverts.savepoint.dev", "team-a"),  # CRs belong to their users
    ("delete", "sharerestores.savepoint.dev", "team-a"),  # (a schedule's children are the exception: above)
    ("create", "savepointschedules.savepoint.dev", "team-a"),
    ("delete", "savepointschedules.savepoint.dev", "team-a"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("patch", "volumesnapshotcontents.snapshot.storage.k8s.io/status", None),
    ("delete", "namespaces", None),
    ("patch", "nodes", None),
    ("update", "jobs.batch", "team-a"),
    ("create", "jobs.batch", "team-a"),  # no mover in a tenant's namespace
    ("delete", "jobs.batch", "team-a"),
    ("create", "secrets", "team-a"),  # no Ceph key in a tenant's namespace
    ("get", "secrets", OPERATOR_NS),  # its per-Job copies are created and deleted, never read
    ("create", "serviceaccounts", "team-a"),
    ("create", "rolebindings.rbac.authorization.k8s.io", "team-a"),
    ("bind", "clusterroles.rbac.authorization.k8s.io/savepoint-mover", None),
    ("create", "leases.coordination.k8s.io", "kube-node-lease"),
    ("update", "leases.coordination.k8s.io", "kube-system"),
    ("impersonate", "users", None),
    ("patch", "clusterkopfpeerings.zalando.org", None),  # peering is off in the sandbox install
]


def _can_i(cfg: Any, verb: str, resource: str, namespace: str | None, who: str = AS_OPERATOR) -> bool:
    """``kubectl auth can-i`` as ``who`` (the operator); resources "x/status" ask about the subresource."""
    args = ["auth", "can-i", verb]
    base, _, rest = resource.partition("/")
    if rest == "status" or rest == "token" or rest == "exec":
        args += [base, f"--subresource={rest}"]
    else:
        args.append(resource)
    args += ["--all-namespaces"] if namespace is None else ["--namespace", namespace]
    out = kubectl(cfg, *args, f"--as={who}", check=False)
    answer = out.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
    return answer == "yes"


def _ask(kube: Any, cases: list[tuple[str, str, str | None]], want: bool, who: str = AS_OPERATOR) -> None:
    wrong = [f"{v} {r} {'-A' if ns is None else '-n ' + ns}" for v, r, ns in cases
             if _can_i(kube, v, r, ns, who) != want]
    assert not wrong, f"{who} {'cannot' if want else 'can'}:\n" + "\n".join(wrong)


def test_operator_may_do_what_it_needs(kube: Any, chart: Any) -> None:
    _ask(kube, ALLOWED, True)


def test_operator_may_not_do_more(kube: Any, chart: Any) -> None:
    _ask(kube, FORBIDDEN, False)


@pytest.fixture
def scratch_namespace(kube: Any) -> Iterator[str]:
    name = f"sp-chart-rbac-{uuid.uuid4().hex[:6]}"
    kubectl(kube, "create", "namespace", name)
    yield name
    kubectl(kube, "delete", "namespace", name, "--wait=false")


def test_operator_token_acts_with_the_chart_rbac(kube: Any, chart: Any, scratch_namespace: str) -> None:
    """The kubeconfig from helpers.operator_sa is the chart's ServiceAccount: it can make a mover's objects in
    its own namespace and nowhere else; the movers' ServiceAccount can patch ConfigMaps there and nothing more."""
    config = operator_kubeconfig(kube)
    assert (os.stat(config).st_mode & 0o077) == 0
    who = json.loads(kubectl(kube, "auth", "whoami", "-o", "json", kubeconfig=config).stdout)
    assert who["status"]["userInfo"]["username"] == AS_OPERATOR

    def as_operator(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return kubectl(kube, *args, kubeconfig=config, input=input, check=check)

    name = f"rbac-probe-{uuid.uuid4().hex[:6]}"
    as_operator("-n", OPERATOR_NS, "create", "configmap", name)
    as_operator("-n", OPERATOR_NS, "delete", "configmap", name)
    refused = as_operator("-n", scratch_namespace, "create", "configmap", name, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    mover = f"system:serviceaccount:{OPERATOR_NS}:savepoint-mover"
    for verb, resource, ns, want in (("patch", "configmaps", OPERATOR_NS, True),
                                     ("get", "secrets", OPERATOR_NS, False),
                                     ("patch", "volumereverts.savepoint.dev", scratch_namespace, False),
                                     ("get", "volumereverts.savepoint.dev", scratch_namespace, False),
                                     ("patch", "configmaps", scratch_namespace, False)):
        out = kubectl(kube, "auth", "can-i", verb, resource, "-n", ns, f"--as={mover}", check=False).stdout.strip()
        assert out == ("yes" if want else "no"), (verb, resource, ns, out)
    out = kubectl(kube, "auth", "can-i", "patch", "volumereverts.savepoint.dev", "--subresource=status", "-n",
                  scratch_namespace, f"--as={mover}", check=False).stdout.strip()
    assert out == "no", "movers write no status: the operator relays their progress"
    # Ceph credentials: its one Secret is readable, listing Secrets is not.
    as_operator("-n", "ceph-csi", "get", "secret/csi-rbd-secret", "-o", "name")
    listed = as_operator("-n", "ceph-csi", "get", "secrets", check=False)
    assert listed.returncode != 0 and "forbidden" in listed.stderr.lower()


# --- what namespace users may do: Kubernetes' view/edit/admin with the aggregated user roles -------

SAVEPOINT_KINDS = [f"{plural}.savepoint.dev" for plural in ("volumereverts", "sharebackups", "sharerestores",
                                                             "imagesnapshots")]
READ = ("get", "list", "watch")
WRITE = ("create", "delete", "deletecollection", "patch", "update")
STATUS = ("get", "patch", "update")


def _user_cases(ns: str) -> dict[str, tuple[list[tuple[str, str, str | None]], list[tuple[str, str, str | None]]]]:
    """Role -> (allowed, forbidden) for a user bound to that Kubernetes role in namespace ``ns`` only."""
    read = [(v, k, ns) for k in SAVEPOINT_KINDS for v in READ]
    write = [(v, k, ns) for k in SAVEPOINT_KINDS for v in WRITE]
    status = [(v, f"{k}/status", ns) for k in SAVEPOINT_KINDS for v in ("patch", "update")]
    elsewhere = [
        # Another tenant's namespace, the operator's, ceph-csi's, the cluster.
        ("get", "volumereverts.savepoint.dev", "another-team"),
        ("create", "sharebackups.savepoint.dev", "another-team"),
        ("list", "imagesnapshots.savepoint.dev", None),
        ("get", "secrets", OPERATOR_NS),
        ("list", "secrets", OPERATOR_NS),
        ("get", "configmaps", OPERATOR_NS),
    ("list", "events", OPERATOR_NS),
        ("list", "jobs.batch", OPERATOR_NS),
        ("list", "pods", OPERATOR_NS),
        ("create", "pods/exec", OPERATOR_NS),
        ("create", "serviceaccounts/token", OPERATOR_NS),
        ("create", "volumereverts.savepoint.dev", OPERATOR_NS),
        ("get", "secrets/csi-rbd-secret", "ceph-csi"),
        ("get", "configmaps/ceph-csi-config", "ceph-csi"),
        ("list", "persistentvolumes", None),
        ("patch", "namespaces", None),
        ("create", "resourcequotas", ns),
    ]
    return {
        "view": (read, write + status + elsewhere),
        "edit": (read + write, status + elsewhere),
        "admin": (read + write, status + elsewhere),
    }


@pytest.fixture
def namespace_users(kube: Any, chart: Any, scratch_namespace: str) -> dict[str, str]:
    """A user bound to each of Kubernetes' view, edit and admin roles in the scratch namespace (only)."""
    users = {}
    for role in ("view", "edit", "admin"):
        user = f"{role}-user-{uuid.uuid4().hex[:6]}"
        kubectl(kube, "-n", scratch_namespace, "create", "rolebinding", f"{role}-user", f"--clusterrole={role}",
                f"--user={user}")
        users[role] = user
    return users


def test_namespace_users_get_savepoint_through_view_edit_admin(kube: Any, scratch_namespace: str,
                                                             namespace_users: dict[str, str]) -> None:
    """The chart's aggregated roles: view reads the four kinds; edit and admin also create, change and delete
    them; none of them writes status (only the operator does), nor reaches beyond the namespace."""
    for role, (allowed, forbidden) in _user_cases(scratch_namespace).items():
        _ask(kube, allowed, True, namespace_users[role])
        _ask(kube, forbidden, False, namespace_users[role])
    # Status is the operator's, in every namespace.
    _ask(kube, [(v, f"{k}/status", "team-a") for k in SAVEPOINT_KINDS for v in STATUS], True)


def test_a_namespace_tenant_acts_with_the_aggregated_roles(kube: Any, chart: Any) -> None:
    """The e2e suite's tenant (helpers.tenant: a namespace ServiceAccount bound to ``edit``, with a real
    token) creates, labels and deletes a CR, and is refused writing its status and reading the operator's
    Secrets and ceph-csi's key."""
    from kubernetes import client

    tenant = make_namespace(kube, f"sp-chart-tenant-{uuid.uuid4().hex[:6]}")
    try:
        body = {"apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": "mine"},
                "spec": {"volume": {"persistentVolumeClaim": {"name": "data"}}, "snapshot": {"rbdSnapshot": "s"}}}
        api = tenant.custom
        api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", tenant.namespace, "volumereverts", body)
        api.patch_namespaced_custom_object("savepoint.dev", "v1alpha1", tenant.namespace, "volumereverts", "mine",
                                           {"metadata": {"labels": {"team": "a"}}})
        refusals = {
            "status": lambda: api.patch_namespaced_custom_object_status(
                "savepoint.dev", "v1alpha1", tenant.namespace, "volumereverts", "mine",
                {"status": {"phase": "Succeeded"}}),
            "operator's secrets": lambda: tenant.core.list_namespaced_secret(OPERATOR_NS),
            "ceph-csi's key": lambda: tenant.core.read_namespaced_secret("csi-rbd-secret", "ceph-csi"),
            "another namespace": lambda: api.list_namespaced_custom_object("savepoint.dev", "v1alpha1",
                                                                           "default", "volumereverts"),
        }
        for what, attempt in refusals.items():
            with pytest.raises(client.ApiException) as refused:
                attempt()
            assert refused.value.status == 403, (what, refused.value.body)
        mine = api.get_namespaced_custom_object("savepoint.dev", "v1alpha1", tenant.namespace, "volumereverts", "mine")
        assert "status" not in mine or mine["status"].get("phase") != "Succeeded"
        api.delete_namespaced_custom_object("savepoint.dev", "v1alpha1", tenant.namespace, "volumereverts", "mine")
        labels = client.CoreV1Api().read_namespace(tenant.namespace).metadata.labels
        assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    finally:
        forget(tenant.namespace)
        client.CoreV1Api().delete_namespace(tenant.namespace)


def _wait_cluster_role(name: str, done: Any, timeout: float = 60) -> dict[str, Any]:
    """Watch ClusterRole ``name`` until ``done(rules)``; the aggregation controller fills aggregated roles."""
    from kubernetes import client, watch

    rbac = client.RbacAuthorizationV1Api()
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        listed = rbac.list_cluster_role(field_selector=f"metadata.name={name}")
        for role in listed.items:
            last = role.rules or []
            if done(last):
                return role
        w = watch.Watch()
        for event in w.stream(rbac.list_cluster_role, field_selector=f"metadata.name={name}",
                              resource_version=listed.metadata.resource_version,
                              timeout_seconds=max(1, int(deadline - time.monotonic()))):
            last = event["object"].rules or []
            if event["type"] != "DELETED" and done(last):
                w.stop()
                return event["object"]
    raise AssertionError(f"clusterrole/{name} never got there; rules: {last}")


def _grants_savepoint(rules: list[Any]) -> bool:
    return any("savepoint.dev" in (r.api_groups or []) and "create" in (r.verbs or []) for r in rules)


def test_the_aggregation_switch(test_release: Any, tmp_path: Path) -> None:
    """userRoles.aggregate=false takes the rules out of Kubernetes' roles; userRoles.create=false removes
    the ClusterRoles. Observed through a ClusterRole aggregating only this release's edit role (the main
    release aggregates the same rules into ``edit`` itself), bound to a user in a namespace."""
    from kubernetes import client, config

    cfg = test_release
    config.load_kube_config(str(cfg.kubeconfig))
    chart = CHART  # the shared API server's CRDs belong to no release: crds.install=false below
    rbac = client.RbacAuthorizationV1Api()
    probe = f"{TEST_RELEASE}-aggregation-probe"
    user = f"probe-user-{uuid.uuid4().hex[:6]}"
    rbac.create_cluster_role({
        "metadata": {"name": probe},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {
            "rbac.authorization.k8s.io/aggregate-to-edit": "true", "app.kubernetes.io/instance": TEST_RELEASE}}]},
        "rules": []})
    try:
        kubectl(cfg, "-n", TEST_NS, "create", "rolebinding", "probe", f"--clusterrole={probe}", f"--user={user}")
        helm(cfg, "install", TEST_RELEASE, chart, "--namespace", TEST_NS, "--set", "replicas=0",
             "--set", "crds.install=false")
        edit_role = f"{TEST_PREFIX}-edit"
        labels = rbac.read_cluster_role(edit_role).metadata.labels
        assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
        assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
        assert "rbac.authorization.k8s.io/aggregate-to-view" not in labels
        assert rbac.read_cluster_role(f"{TEST_PREFIX}-view").metadata.labels[
            "rbac.authorization.k8s.io/aggregate-to-view"] == "true"
        _wait_cluster_role(probe, _grants_savepoint)
        _ask(cfg, [("create", k, TEST_NS) for k in SAVEPOINT_KINDS], True, user)

        helm(cfg, "upgrade", TEST_RELEASE, chart, "--namespace", TEST_NS, "--reuse-values",
             "--set", "userRoles.aggregate=false")
        labels = rbac.read_cluster_role(edit_role).metadata.labels
        assert not [k for k in labels if k.startswith("rbac.authorization.k8s.io/aggregate-to-")], labels
        _wait_cluster_role(probe, lambda rules: not _grants_savepoint(rules))
        _ask(cfg, [("create", k, TEST_NS) for k in SAVEPOINT_KINDS], False, user)
        # The roles are still there to bind explicitly.
        kubectl(cfg, "-n", TEST_NS, "create", "rolebinding", "direct", f"--clusterrole={edit_role}",
                f"--user={user}-direct")
        _ask(cfg, [("create", k, TEST_NS) for k in SAVEPOINT_KINDS], True, f"{user}-direct")
        _ask(cfg, [("patch", f"{k}/status", TEST_NS) for k in SAVEPOINT_KINDS], False, f"{user}-direct")

        helm(cfg, "upgrade", TEST_RELEASE, chart, "--namespace", TEST_NS, "--reuse-values",
             "--set", "userRoles.create=false")
        for name in (f"{TEST_PREFIX}-view", edit_role):
            assert not _exists(cfg, f"clusterrole/{name}"), name
    finally:
        rbac.delete_cluster_role(probe)

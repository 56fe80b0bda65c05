"""Test namespaces as a cluster gives them to an application team, and that team's principal.

Savepoint's kinds are namespaced so that tenants use them themselves (docs/security.md). The e2e tests act
as such a tenant, not as admin: every test namespace is made by ``make_namespace``, which

- creates it labelled ``pod-security.kubernetes.io/enforce=baseline``, so the API server's own Pod Security
  admission checks every pod created there (movers included);
- creates the ServiceAccount ``tenant`` there, bound by a RoleBinding to Kubernetes' ClusterRole ``edit``
  (which gets Savepoint's kinds only through the chart's aggregated ``<prefix>-edit``; install the chart
  first), and mints it a TokenRequest token into a kubeconfig of its own (``helpers.operator_sa``);
- waits until the API server authorizes that principal to create each of Savepoint's kinds there.

``edit`` is a strong tenant on purpose: it may create Jobs, Pods and Secrets in its namespace and read the
Secrets there -- the principal the trust model protects everything else against. Whatever a test does
that a cluster administrator would do instead (PersistentVolumes, StorageClasses, Ceph, exports, quotas,
raw-reference namespaces, reading results back) stays with the admin kubeconfig.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from helpers.operator_sa import service_account_kubeconfig

GROUP, VERSION = "savepoint.dev", "v1alpha1"
PLURALS = ("volumereverts", "sharebackups", "sharerestores", "imagesnapshots")
TENANT_SA = "tenant"
POD_SECURITY = {"pod-security.kubernetes.io/enforce": "baseline",
                "pod-security.kubernetes.io/enforce-version": "latest"}


@dataclass
class Tenant:
    """A namespace's ``edit`` ServiceAccount: its kubeconfig, and API clients that authenticate as it."""

    cfg: Any
    namespace: str
    service_account: str
    role: str
    kubeconfig: Path
    api_client: client.ApiClient = field(repr=False)

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api_client)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``kubectl -n <namespace>`` with the tenant's kubeconfig."""
        out = subprocess.run([str(self.cfg.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}", "-n",
                              self.namespace, *args], capture_output=True, text=True, input=input, timeout=300,
                             check=False)
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} as {self.username} failed:\n{out.stdout}\n{out.stderr}")
        return out

    def apply(self, *objs: dict[str, Any]) -> str:
        """``kubectl apply`` of ``objs`` into the tenant's namespace, as the tenant."""
        return self.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs)).stdout

    def allowed(self, verb: str, resource: str, group: str = GROUP, subresource: str = "") -> bool:
        """Asks the API server (a SelfSubjectAccessReview as the tenant) whether it may do this here."""
        review = client.AuthorizationV1Api(self.api_client).create_self_subject_access_review({
            "spec": {"resourceAttributes": {"namespace": self.namespace, "verb": verb, "group": group,
                                            "resource": resource, "subresource": subresource}}})
        return bool(review.status.allowed)

    def close(self) -> None:
        self.api_client.close()
        self.kubeconfig.unlink(missing_ok=True)


# Every tenant made in this process, by namespace (make_volume and friends create claims as the
# namespace's tenant).
_TENANTS: dict[str, Tenant] = {}


def tenant_of(namespace: str) -> Tenant:
    try:
        return _TENANTS[namespace]
    except KeyError:
        raise KeyError(f"namespace {namespace} has no tenant: make it with helpers.tenant.make_namespace") from None


def make_namespace(cfg: Any, name: str, *, role: str = "edit", labels: dict[str, str] | None = None,
                   timeout: float = 60) -> Tenant:
    """Namespace ``name`` (Pod Security baseline enforced) with its tenant; see the module's docstring."""
    core = client.CoreV1Api()
    core.create_namespace({"metadata": {"name": name, "labels": {**POD_SECURITY, **(labels or {})}}})
    try:
        core.create_namespaced_service_account(name, {"metadata": {"name": TENANT_SA}})
        client.RbacAuthorizationV1Api().create_namespaced_role_binding(name, {
            "metadata": {"name": f"{TENANT_SA}-{role}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": TENANT_SA, "namespace": name}]})
        path = service_account_kubeconfig(cfg, name, TENANT_SA, duration="3h")
        tenant = Tenant(cfg, name, TENANT_SA, role, path, config.new_client_from_config(config_file=str(path)))
        wait_allowed(tenant, [("create" if role in ("edit", "admin") else "list", p) for p in PLURALS], timeout)
    except BaseException:
        core.delete_namespace(name)  # nothing of Savepoint's is in it yet
        raise
    _TENANTS[name] = tenant
    return tenant


def wait_allowed(tenant: Tenant, checks: list[tuple[str, str]], timeout: float = 60) -> None:
    """Until the API server authorizes every (verb, resource) of ``checks`` for the tenant.

    RBAC has no watchable "now in effect": a new RoleBinding reaches the authorizer's cache a moment after
    it is created, and ClusterRole aggregation is done by the controller manager after the chart's roles
    appear. So this asks again until the answer is yes, and fails naming what is still refused."""
    deadline = time.monotonic() + timeout
    while True:
        refused = [(verb, resource) for verb, resource in checks if not tenant.allowed(verb, resource)]
        if not refused:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{tenant.username} is still refused {refused} after {timeout}s: is the chart "
                                 f"(its aggregated {tenant.role} ClusterRole) installed?")
        time.sleep(0.2)


def forget(namespace: str) -> None:
    """Drop the namespace's tenant (its API client and kubeconfig); the namespace itself is the caller's."""
    tenant = _TENANTS.pop(namespace, None)
    if tenant:
        tenant.close()


def delete_namespaces(names: list[str], *, plurals: tuple[str, ...] = PLURALS, timeout: float = 60) -> None:
    """Delete Savepoint's CRs in ``names`` first and wait until they are gone (their finalizers run while the
    operator is still up), then the namespaces (without waiting for them)."""
    api = client.CustomObjectsApi()
    for name in names:
        for plural in plurals:
            api.delete_collection_namespaced_custom_object(GROUP, VERSION, name, plural)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
            api.list_namespaced_custom_object(GROUP, VERSION, name, p)["items"] for name in names for p in plurals):
        time.sleep(0.2)
    for name in names:
        client.CoreV1Api().delete_namespace(name)

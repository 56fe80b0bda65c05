"""The operator's settings: one typed object, read from ``SAVEPOINT_*`` environment variables.

The Helm chart sets these from its values; every field says what it controls.
"""

from __future__ import annotations

import fnmatch
import json
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    namespace: str = Field("savepoint-system", description="Namespace the operator runs in.")
    ceph_config_map: str = Field(
        "ceph-csi/ceph-csi-config",
        description="namespace/name of ceph-csi's ConfigMap whose `config.json` maps clusterID to monitors.",
    )
    ceph_secret: str = Field(
        "ceph-csi/csi-rbd-secret",
        description="namespace/name of the Secret with ceph-csi's `userID`/`userKey` Savepoint uses for RBD.",
    )
    raw_reference_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces (shell patterns, e.g. `storage-admin-*`) whose CRs may use raw `rbd:`/`nfs:` "
        "references (admins only). `*` allows all; empty allows none.",
    )
    default_repository: dict[str, Any] | None = Field(
        None,
        description="Backup repository used when a ShareBackup names none: "
        '`{"nfs": {"server": ..., "path": ...}}`.',
    )
    watch_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces (shell patterns) the operator serves; empty: the whole cluster.",
    )
    image_pool: str = Field("images", description="Default destination pool of ImageSnapshots.")
    image_pools: list[str] = Field(
        default_factory=list,
        description="Further pools ImageSnapshots may name as spec.destination.pool (besides image_pool). "
        "Namespaces allowed raw references may name any pool.",
    )
    image_copy_secret: str | None = Field(
        None,
        description="namespace/name of a Secret in ceph-csi's format (`userID`/`userKey`) whose cephx user runs "
        "ImageSnapshot's fallback copy and owns the images it copies: it needs read access to the source pools and "
        "write access to the image pool only (e.g. `osd 'profile rbd-read-only pool=rbd, profile rbd pool=images'`). "
        "Unset: the user of `ceph_secret`, which then needs write access to the image pool for the fallback too.",
    )
    mover_image: str = Field("ghcr.io/savepoint-dev/savepoint:0.1.0", description="Image of mover Jobs.")
    mover_service_account: str = Field(
        "savepoint-mover",
        description="ServiceAccount mover Jobs run as, in the operator's namespace (made by the chart; it may only "
        "patch ConfigMaps there, to report progress).",
    )
    mover_privileged_allowed: bool = Field(False, description="May movers that need it run privileged?")
    mover_concurrency: int = Field(4, ge=1, description="At most this many mover Jobs run at once, cluster-wide.")
    mover_namespace_share: int | None = Field(
        None, ge=1,
        description="At most this many mover slots for one namespace while another namespace waits for one "
        "(unset: half of mover_concurrency, at least 1). Alone, a namespace may use every slot.",
    )
    mover_backoff_limit: int = Field(1, ge=0, description="Job backoffLimit for movers.")
    mover_start_timeout: float = Field(
        120, gt=0,
        description="Seconds a mover pod may fail to start (refused by admission or a quota, unschedulable, image "
        "not pullable) before its step fails with the pod's own reason; meanwhile the CR shows that reason.",
    )
    mover_pod: dict[str, Any] = Field(
        default_factory=dict,
        description="Pod settings of mover Jobs (JSON): `resources`, `nodeSelector`, `tolerations`, `affinity`, "
        "`priorityClassName`, `imagePullSecrets`, `podSecurityContext`, `securityContext` (merged over the "
        "mover's own least-privilege container context; leave `runAsUser` unset for OpenShift's ranges).",
    )
    mover_progress_interval: float = Field(2.0, gt=0, description="Seconds between progress updates from a mover.")
    default_deadline_seconds: int = Field(3600, ge=1, description="Deadline of a CR that sets no deadlineSeconds.")
    max_volume_bytes: int = Field(
        64 << 40, ge=1 << 30, le=1 << 50,
        description="The largest volume Savepoint creates or accepts a size for (a restore's new claim; sizes "
        "read from a repository): 64 TiB by default.",
    )
    max_deadline_seconds: int = Field(
        7 * 24 * 3600, ge=60,
        description="The longest deadline a CR may ask for (its deadlineSeconds is capped here; the CRDs refuse "
        "more than 30 days).",
    )
    metrics_port: int = Field(8080, description="Port of the Prometheus /metrics endpoint (0 disables).")
    health_port: int = Field(8081, description="Port of /healthz (0 disables).")
    peering: str | None = Field(None, description="kopf peering name for leader election across replicas (None: standalone).")

    @field_validator("raw_reference_namespaces", "watch_namespaces", "image_pools", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def serves(self, namespace: str) -> bool:
        """Is ``namespace`` one of those this operator serves?"""
        return not self.watch_namespaces or any(fnmatch.fnmatchcase(namespace, p) for p in self.watch_namespaces)

    def image_pools_allowed(self) -> list[str]:
        return [self.image_pool, *[p for p in self.image_pools if p != self.image_pool]]

    def image_pool_allowed(self, namespace: str, pool: str) -> bool:
        """May an ImageSnapshot in ``namespace`` write its image into ``pool``?"""
        return pool in self.image_pools_allowed() or self.raw_references_allowed(namespace)

    def raw_references_allowed(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in self.raw_reference_namespaces)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(f"SAVEPOINT_{name.upper()}")
            if raw is None or raw == "":
                continue
            annotation = field.annotation
            if name in JSON_SETTINGS:
                values[name] = json.loads(raw)
            elif annotation is bool:
                values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[name] = raw
        return cls(**values)


JSON_SETTINGS = ("default_repository", "mover_pod")


def split_ref(ref: str) -> tuple[str, str]:
    """``"ns/name"`` → ``("ns", "name")``."""
    namespace, _, name = ref.partition("/")
    if not name:
        raise ValueError(f"expected namespace/name, got {ref!r}")
    return namespace, name

"""``kubectl savepoint backup | restore | backups list | backups import``: the plugin's backup commands.

Registered by ``savepoint.cli.main`` (``add_parsers``). ``backups import`` recreates
ShareBackup objects (phase Available) from the ``backup.json`` files of a
repository, so backups survive the loss of the cluster or its etcd. It reads
the repository one of two ways:

- ``--path DIR``: a directory where the repository is mounted on this machine
  (e.g. ``mount -t nfs4 server:/backups /mnt``), read directly; or
- by default, a short-lived Job in the namespace that mounts the repository
  (``--repository pvc/NAME`` or ``nfs://SERVER/PATH``) read-only and lists it
  with the mover's ``repository-list`` action (image: ``--image``, else the
  operator's mover image). It needs no ServiceAccount token and writes
  nothing; its result comes back in pages through the termination message.

The operator recognises an imported object by its ``savepoint.dev/imported``
annotation and makes it Available without copying anything (a backup of
another namespace needs a namespace where raw references are allowed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

GROUP, VERSION = "savepoint.dev", "v1alpha1"
ANN_IMPORTED = "savepoint.dev/imported"
ANN_BACKUP_UID = "savepoint.dev/backup-uid"
ANN_REPOSITORY = "savepoint.dev/repository"
LIST_MOUNT = "/savepoint/repository"


def repository_ref(text: str) -> dict[str, Any]:
    """``pvc/NAME`` or ``nfs://SERVER/PATH`` (or ``SERVER:/PATH``) as spec.repository."""
    if text.startswith("pvc/"):
        return {"persistentVolumeClaim": {"name": text[4:]}}
    if text.startswith("nfs://"):
        server, _, path = text[6:].partition("/")
        return {"nfs": {"server": server, "path": "/" + path.strip("/")}}
    if ":/" in text:
        server, _, path = text.partition(":")
        return {"nfs": {"server": server, "path": path}}
    raise ValueError(f"repository {text!r}: use pvc/NAME or nfs://SERVER/PATH")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower())[:40].strip("-")


# ---- backup / restore ---------------------------------------------------------------------------


def cmd_backup(cli: Any, args: argparse.Namespace) -> int:
    from savepoint.cli.main import created

    pvc = args.pvc.removeprefix("pvc/")
    spec: dict[str, Any] = {"source": {"persistentVolumeClaim": {"name": pvc}}, "incremental": not args.full,
                            "verify": args.verify, "force": args.force}
    if args.repository:
        spec["repository"] = repository_ref(args.repository)
    if args.deadline:
        spec["deadlineSeconds"] = args.deadline
    name = args.name or f"{_safe(pvc)}-{time.strftime('%Y%m%d-%H%M%S')}"
    meta: dict[str, Any] = {}
    if args.description:
        meta = {"annotations": {"savepoint.dev/description": args.description}}
    return created(cli, args, cli.body("ShareBackup", name, spec, meta))


def cmd_restore(cli: Any, args: argparse.Namespace) -> int:
    from savepoint.cli.main import UsageError, created

    spec: dict[str, Any] = {"backup": {"name": args.backup}, "deleteExtraFiles": not args.keep_extra_files}
    if args.to_pvc and args.new_claim:
        raise UsageError("give --to-pvc or --new-claim, not both")
    if args.to_pvc:
        spec["target"] = {"persistentVolumeClaim": {"name": args.to_pvc.removeprefix("pvc/")}}
    elif args.new_claim:
        claim: dict[str, Any] = {"name": args.new_claim}
        if args.storage_class:
            claim["storageClassName"] = args.storage_class
        if args.size:
            claim["size"] = args.size
        spec["target"] = {"newClaim": claim}
    if args.deadline:
        spec["deadlineSeconds"] = args.deadline
    name = args.name or f"restore-{_safe(args.backup)}-{uuid.uuid4().hex[:5]}"
    return created(cli, args, cli.body("ShareRestore", name, spec))


# ---- backups list --------------------------------------------------------------------------------


def _age(stamp: str | None) -> str:
    if not stamp:
        return "-"
    import datetime

    when = datetime.datetime.fromisoformat(stamp)
    seconds = int((datetime.datetime.now(datetime.UTC) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def cmd_backups_list(cli: Any, args: argparse.Namespace) -> int:
    if args.repository or args.path:
        entries = list_repository(cli, args)
        if args.output in ("json", "yaml"):
            print(json.dumps(entries, indent=2) if args.output == "json" else _yaml(entries))
            return 0
        rows = [("PATH", "FORMAT", "SOURCE", "SIZE", "FILES", "STORED", "PARENT", "COMPLETED")]
        for e in entries:
            rows.append((e["path"], e["format"], e.get("description") or "-", str(e.get("sizeBytes") or "-"),
                         str(e.get("fileCount") if e.get("fileCount") is not None else e.get("chunkCount") or "-"),
                         str(e.get("bytesStored") or 0), e.get("parent") or "-", e.get("completed") or "-"))
        _table(rows)
        return 0
    from savepoint.cli.main import as_list

    items = cli.list("sharebackups")
    if args.pvc:
        items = [o for o in items if ((o.get("spec") or {}).get("source") or {}).get("persistentVolumeClaim", {})
                 .get("name") == args.pvc]
    items.sort(key=lambda o: (o["metadata"]["namespace"], (o.get("status") or {}).get("completionTime") or "",
                              o["metadata"]["name"]))
    if args.output == "name":
        from savepoint.cli.main import output

        output(items, "name")
        return 0
    if args.output:
        doc = as_list(items)
        print(json.dumps(doc, indent=2, default=str) if args.output == "json" else _yaml(doc))
        return 0
    wide = cli.all_namespaces
    rows = [(("NAMESPACE",) if wide else ()) + ("NAME", "PHASE", "SOURCE", "SIZE", "FILES", "STORED", "PARENT", "AGE")]
    for o in items:
        st = o.get("status") or {}
        count = st.get("fileCount") if st.get("fileCount") is not None else st.get("chunkCount")
        rows.append(((o["metadata"]["namespace"],) if wide else ()) + (
            o["metadata"]["name"], st.get("phase") or "-", st.get("source") or "-", st.get("size") or "-",
            str(count if count is not None else "-"), str(st.get("bytesStored") or 0),
            st.get("parentBackup") or "-", _age(o["metadata"].get("creationTimestamp"))))
    _table(rows)
    return 0


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def _yaml(obj: Any) -> str:
    import yaml

    return str(yaml.safe_dump(obj, sort_keys=False))


# ---- reading a repository ------------------------------------------------------------------------


def list_repository(cli: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Complete backups of the namespace (``--from-namespace``) in the repository, as listing entries."""
    namespace = getattr(args, "from_namespace", None) or cli.namespace
    if args.path:
        from savepoint.mover.files import _entry
        from savepoint.storage import repository

        listing = repository.list_backups(Path(args.path), namespace)
        for rel, why in listing.invalid:
            print(f"warning: skipped {rel}: {why}", file=sys.stderr)
        return [_entry(b) for b in listing.backups]
    if not args.repository:
        raise ValueError("give --repository (pvc/NAME or nfs://SERVER/PATH) or --path DIR")
    return list_with_job(cli, repository_ref(args.repository), namespace, image=args.image, timeout=args.timeout)


def mover_image(cli: Any, explicit: str | None) -> str:
    """--image, else the operator Deployment's mover image (when readable), else the built-in default."""
    if explicit:
        return explicit
    from kubernetes import client
    from savepoint.settings import Settings

    try:
        for dep in client.AppsV1Api(cli.api).list_deployment_for_all_namespaces(
                label_selector="app.kubernetes.io/name=savepoint").items:
            for c in dep.spec.template.spec.containers:
                for env in c.env or []:
                    if env.name == "SAVEPOINT_MOVER_IMAGE" and env.value:
                        return str(env.value)
    except Exception as exc:  # noqa: BLE001 - not allowed to look: fall back
        print(f"note: cannot read the operator's mover image ({type(exc).__name__}); using the default",
              file=sys.stderr)
    return Settings().mover_image


def list_job(namespace: str, name: str, repository: dict[str, Any], request: str, image: str,
             deadline: int) -> dict[str, Any]:
    """A Job that mounts the repository read-only and runs the mover's ``repository-list``; no API access."""
    if "persistentVolumeClaim" in repository:
        volume = {"name": "repository", "persistentVolumeClaim": {
            "claimName": repository["persistentVolumeClaim"]["name"], "readOnly": True}}
    else:
        volume = {"name": "repository", "nfs": {**repository["nfs"], "readOnly": True}}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "savepoint-mover", "app.kubernetes.io/managed-by": "savepoint",
                                "savepoint.dev/cli": "backups-list"}},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": deadline, "ttlSecondsAfterFinished": 600,
                 "template": {"metadata": {"labels": {"savepoint.dev/cli": "backups-list"}}, "spec": {
                     "restartPolicy": "Never", "automountServiceAccountToken": False,
                     "containers": [{
                         "name": "list", "image": image, "command": ["python", "-m", "savepoint.mover"],
                         "env": [{"name": "SAVEPOINT_MOVER_REQUEST", "value": request}],
                         "volumeMounts": [{"name": "repository", "mountPath": LIST_MOUNT, "readOnly": True}],
                         "terminationMessagePolicy": "FallbackToLogsOnError",
                         "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                             "runAsUser": 65532, "capabilities": {"drop": ["ALL"]},
                                             "seccompProfile": {"type": "RuntimeDefault"}}}],
                     "volumes": [volume]}}},
    }


def list_with_job(cli: Any, repository: dict[str, Any], namespace: str, *, image: str | None,
                  timeout: float) -> list[dict[str, Any]]:
    from kubernetes import client, watch
    from savepoint.mover.files import unpack
    from savepoint.mover.request import MoverRequest, MoverResult

    batch = client.BatchV1Api(cli.api)
    image = mover_image(cli, image)
    entries: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        name = f"savepoint-list-{uuid.uuid4().hex[:8]}"
        request = MoverRequest(action="repository-list", params={"repository": LIST_MOUNT, "namespace": namespace,
                                                                 "offset": offset}).to_env()
        batch.create_namespaced_job(cli.namespace, list_job(cli.namespace, name, repository, request, image,
                                                            max(60, int(timeout))))
        try:
            w = watch.Watch()
            for event in w.stream(batch.list_namespaced_job, cli.namespace, field_selector=f"metadata.name={name}",
                                  timeout_seconds=max(1, int(timeout))):
                conditions = event["object"].status.conditions or []
                if any(c.status == "True" and c.type in ("Complete", "Failed") for c in conditions):
                    w.stop()
                    break
            pods = cli.core.list_namespaced_pod(cli.namespace, label_selector=f"batch.kubernetes.io/job-name={name}")
            message = ""
            for pod in pods.items:
                for cs in pod.status.container_statuses or []:
                    if cs.state and cs.state.terminated and cs.state.terminated.message:
                        message = cs.state.terminated.message
            result = MoverResult.parse(message)
            if result is None or not result.ok:
                why = (result.message if result else None) or message.strip() or "no result (did the Job start?)"
                raise RuntimeError(f"listing the repository failed: {why}")
        finally:
            batch.delete_namespaced_job(name, cli.namespace, propagation_policy="Background")
        data = result.data
        entries += unpack(data["entries"])
        for problem in data.get("invalid") or []:
            print(f"warning: skipped {problem}", file=sys.stderr)
        offset = data.get("next")
    return entries


# ---- backups import ------------------------------------------------------------------------------


def import_body(entry: dict[str, Any], repository: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The ShareBackup recreated from one listing entry (pure)."""
    reference = entry.get("reference") or ({"persistentVolumeClaim": {"name": entry["pvc"]}} if entry.get("pvc")
                                           else None)
    if not reference:
        raise ValueError(f"{entry['path']}: the manifest names no source")
    labels = {k: v for k, v in (entry.get("labels") or {}).items()}
    labels["savepoint.dev/imported"] = "true"
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ShareBackup",
        "metadata": {"name": entry["name"], "namespace": namespace, "labels": labels,
                     "annotations": {ANN_IMPORTED: json.dumps(entry, separators=(",", ":"), sort_keys=True),
                                     ANN_BACKUP_UID: entry["uid"],
                                     ANN_REPOSITORY: json.dumps(repository, sort_keys=True, separators=(",", ":"))}},
        "spec": {"source": reference, "repository": repository, "verify": bool(entry.get("verified"))},
    }


def cmd_backups_import(cli: Any, args: argparse.Namespace) -> int:
    if not args.repository:
        print("backups import needs --repository (pvc/NAME or nfs://SERVER/PATH): the imported ShareBackups "
              "read their data from it", file=sys.stderr)
        return 2
    repository = repository_ref(args.repository)
    entries = list_repository(cli, args)
    existing = {o["metadata"]["name"]: o for o in cli.custom.list_namespaced_custom_object(
        GROUP, VERSION, cli.namespace, "sharebackups")["items"]}
    known_uids = {(o["metadata"].get("annotations") or {}).get(ANN_BACKUP_UID) or o["metadata"]["uid"]
                  for o in existing.values()}
    created = skipped = 0
    for entry in entries:
        if entry["uid"] in known_uids:
            print(f"{entry['name']}: already present")
            skipped += 1
            continue
        if entry["name"] in existing:
            print(f"{entry['name']}: skipped, a ShareBackup of that name exists for another backup "
                  f"(delete or rename it, then import again)", file=sys.stderr)
            skipped += 1
            continue
        body = import_body(entry, repository, cli.namespace)
        if args.dry_run != "none":
            print(f"{entry['name']}: would import {entry['path']}")
            continue
        cli.custom.create_namespaced_custom_object(GROUP, VERSION, cli.namespace, "sharebackups", body)
        print(f"sharebackup.savepoint.dev/{entry['name']} imported from {entry['path']}")
        created += 1
    print(f"{created} imported, {skipped} skipped, {len(entries)} in the repository")
    return 0


# ---- wiring ---------------------------------------------------------------------------------------


def add_parsers(add: Any, common: Any) -> None:
    """Register the backup commands; ``add(name, help)`` makes a subcommand parser with kubectl's global flags."""
    from savepoint.cli.main import _global_options

    b = add("backup", "back up a file share (or RBD volume) PVC into a repository")
    b.add_argument("pvc", help="the PVC to back up (NAME or pvc/NAME)")
    b.add_argument("--repository", help="pvc/NAME or nfs://SERVER/PATH (default: the operator's default repository)")
    b.add_argument("--name", help="name of the ShareBackup (default: PVC-YYYYmmdd-HHMMSS)")
    b.add_argument("--full", action="store_true", help="not incremental: store everything again")
    b.add_argument("--verify", action="store_true", help="re-read both sides and compare checksums")
    b.add_argument("--force", action="store_true", help="block volumes: back up even while in use")
    b.add_argument("--description", help="stored as annotation savepoint.dev/description")
    b.add_argument("--deadline", type=int)
    common(b)
    b.set_defaults(fn=cmd_backup)

    r = add("restore", "restore a ShareBackup into its source, another claim or a new claim")
    r.add_argument("backup", help="name of the ShareBackup")
    r.add_argument("--to-pvc", help="restore into this existing claim (at least as large as the backup)")
    r.add_argument("--new-claim", help="create this claim and restore into it")
    r.add_argument("--storage-class", help="StorageClass of --new-claim (default: the cluster's default)")
    r.add_argument("--size", help="size of --new-claim (default: the backup's)")
    r.add_argument("--keep-extra-files", action="store_true", help="keep files the backup does not have")
    r.add_argument("--name", help="name of the ShareRestore (generated if not given)")
    r.add_argument("--deadline", type=int)
    common(r)
    r.set_defaults(fn=cmd_restore)

    bs = add("backups", "list backups, or re-import them from a repository")
    verbs = bs.add_subparsers(dest="backups_command", required=True, metavar="list|import")
    ls = verbs.add_parser("list", help="ShareBackups of this namespace (-A: all), or (--repository/--path) a "
                                       "repository's backups")
    _global_options(ls, top=False)
    ls.add_argument("--pvc", help="only backups of this PVC")
    _repository_options(ls)
    ls.set_defaults(fn=cmd_backups_list)
    im = verbs.add_parser("import", help="recreate ShareBackups (phase Available) from a repository's backup.json files")
    _global_options(im, top=False)
    _repository_options(im)
    im.add_argument("--dry-run", nargs="?", const="client", default="none", choices=["none", "client"],
                    help="only say what would be imported")
    im.set_defaults(fn=cmd_backups_import)


def _repository_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", help="pvc/NAME or nfs://SERVER/PATH of the repository")
    p.add_argument("--path", help="read the repository from this local directory instead of with a Job")
    p.add_argument("--from-namespace", help="backups filed under another namespace (default: this one)")
    p.add_argument("--image", help="image of the listing Job (default: the operator's mover image)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the listing Job")

"""``kubectl-savepoint`` (``kubectl savepoint ...``): create Savepoint actions and follow them.

Follows kubectl's conventions: ``-n/--namespace``, ``--context``,
``--kubeconfig``, ``-o yaml|json``.  ``--wait`` follows a CR to its end and
exits non-zero when it failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

import yaml

KINDS = {
    "volumerevert": ("VolumeRevert", "volumereverts"), "vrev": ("VolumeRevert", "volumereverts"),
    "sharebackup": ("ShareBackup", "sharebackups"), "sbak": ("ShareBackup", "sharebackups"),
    "sharerestore": ("ShareRestore", "sharerestores"), "srst": ("ShareRestore", "sharerestores"),
    "imagesnapshot": ("ImageSnapshot", "imagesnapshots"), "isnap": ("ImageSnapshot", "imagesnapshots"),
}
FINAL = {"Succeeded", "Failed", "Available"}


class Cli:
    def __init__(self, args: argparse.Namespace) -> None:
        from kubernetes import client, config

        config.load_kube_config(config_file=args.kubeconfig, context=args.context)
        self.api = client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        if args.namespace:
            self.namespace = args.namespace
        else:
            _, active = config.list_kube_config_contexts(config_file=args.kubeconfig)
            if args.context:
                contexts, _ = config.list_kube_config_contexts(config_file=args.kubeconfig)
                active = next((c for c in contexts if c["name"] == args.context), active)
            self.namespace = (active or {}).get("context", {}).get("namespace") or "default"

    def create(self, kind: str, plural: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "savepoint.dev/v1alpha1", "kind": kind,
                "metadata": {"name": name, "namespace": self.namespace}, "spec": spec}
        return self.custom.create_namespaced_custom_object("savepoint.dev", "v1alpha1", self.namespace, plural, body)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object("savepoint.dev", "v1alpha1", self.namespace, plural, name)


def _bar(percent: int, width: int = 30) -> str:
    filled = int(width * percent / 100)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {percent:3d}%"


def summary(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    lines = [f"{obj['kind']}/{obj['metadata']['name']}  phase={st.get('phase', '-')}"]
    ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready:
        lines.append(f"  reason:  {ready.get('reason')}")
    if st.get("message"):
        lines.append(f"  message: {st['message']}")
    progress = st.get("progress") or {}
    if progress and st.get("phase") not in FINAL:
        lines.append(f"  progress {_bar(int(progress.get('percent') or 0))} "
                     f"{progress.get('bytesDone', 0)}/{progress.get('bytesTotal') or '?'} bytes")
    for key in ("source", "snapshot", "method", "fallbackReason", "safetySnapshot", "location"):
        if st.get(key):
            lines.append(f"  {key}: {st[key]}")
    return "\n".join(lines)


def follow(cli: Cli, plural: str, name: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        obj = cli.get(plural, name)
        text = summary(obj)
        if text != last:
            print(text, flush=True)
            last = text
        phase = (obj.get("status") or {}).get("phase")
        if phase in FINAL:
            return 0 if phase != "Failed" else 1
        if time.monotonic() > deadline:
            print(f"timed out after {timeout:.0f}s waiting for {name}", file=sys.stderr)
            return 2
        time.sleep(1)


def output(obj: dict[str, Any], fmt: str | None) -> None:
    if fmt == "json":
        print(json.dumps(obj, indent=2, default=str))
    elif fmt == "yaml":
        print(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))
    else:
        print(summary(obj))


def cmd_revert(cli: Cli, args: argparse.Namespace) -> int:
    snapshot = ({"volumeSnapshot": {"name": args.to.split("/", 1)[1]}} if args.to.startswith("volumesnapshot/")
                else {"rbdSnapshot": args.to})
    spec: dict[str, Any] = {"volume": {"persistentVolumeClaim": {"name": args.pvc}}, "snapshot": snapshot,
                            "safetySnapshot": not args.no_safety_snapshot}
    if args.deadline:
        spec["deadlineSeconds"] = args.deadline
    name = args.name or f"revert-{args.pvc}-{uuid.uuid4().hex[:5]}"[:63]
    obj = cli.create("VolumeRevert", "volumereverts", name, spec)
    print(f"volumerevert.savepoint.dev/{name} created")
    if args.wait:
        return follow(cli, "volumereverts", name, args.timeout)
    if args.output:
        output(obj, args.output)
    return 0


def cmd_snapshot_image(cli: Cli, args: argparse.Namespace) -> int:
    if args.source.startswith("rbd:"):  # administrators: rbd:POOL/IMAGE (raw references must be allowed)
        pool, _, image = args.source[4:].partition("/")
        if not pool or not image or not args.cluster_id:
            print("a raw source is rbd:POOL/IMAGE and needs --cluster-id", file=sys.stderr)
            return 2
        source: dict[str, Any] = {"rbd": {"clusterID": args.cluster_id, "pool": pool, "image": image}}
        label = image
    else:
        source = {"persistentVolumeClaim": {"name": args.source.removeprefix("pvc/")}}
        label = args.source.removeprefix("pvc/")
    spec: dict[str, Any] = {"source": source, "method": args.method,
                            "deletionPolicy": "Retain" if args.retain else "Delete"}
    destination = {k: v for k, v in (("pool", args.pool), ("image", args.image)) if v}
    if destination:
        spec["destination"] = destination
    if args.deadline:
        spec["deadlineSeconds"] = args.deadline
    safe = "".join(c if c.isalnum() else "-" for c in label.lower())[:50].strip("-")
    name = args.name or f"isnap-{safe}-{uuid.uuid4().hex[:5]}"
    obj = cli.create("ImageSnapshot", "imagesnapshots", name, spec)
    print(f"imagesnapshot.savepoint.dev/{name} created")
    if args.wait:
        return follow(cli, "imagesnapshots", name, args.timeout)
    if args.output:
        output(obj, args.output)
    return 0


def cmd_status(cli: Cli, args: argparse.Namespace) -> int:
    kind = KINDS.get(args.kind.lower().rstrip("s")) or KINDS.get(args.kind.lower())
    if kind is None:
        print(f"unknown kind {args.kind!r}; one of {', '.join(sorted(KINDS))}", file=sys.stderr)
        return 2
    if args.wait:
        return follow(cli, kind[1], args.name, args.timeout)
    obj = cli.get(kind[1], args.name)
    output(obj, args.output)
    if not args.output:
        events = cli.core.list_namespaced_event(cli.namespace, field_selector=f"involvedObject.name={args.name}")
        recent = sorted(events.items, key=lambda e: str(e.last_timestamp or e.event_time or ""))[-5:]
        if recent:
            print("  events:")
            for e in recent:
                print(f"    {e.type:7s} {e.reason:22s} {e.message}")
    return 0


def cmd_reset_state(cli: Cli, args: argparse.Namespace) -> int:
    from savepoint import locks

    kind, _, name = args.target.partition("/")
    from savepoint.flows.backup import BACKUP_RESOURCE

    resources = {"pvc": locks.PVC, "persistentvolumeclaim": locks.PVC,
                 "volumesnapshot": locks.VOLUME_SNAPSHOT, "vs": locks.VOLUME_SNAPSHOT,
                 "sharebackup": BACKUP_RESOURCE, "sbak": BACKUP_RESOURCE}
    if kind.lower() not in resources or not name:
        print("reset-state takes pvc/NAME, volumesnapshot/NAME or sharebackup/NAME", file=sys.stderr)
        return 2
    resource = resources[kind.lower()]
    try:
        previous = locks.reset_state(cli.namespace, name, resource=resource, force=args.force)
    except locks.Busy as busy:
        print(f"error: {busy} (use --force to clear it anyway)", file=sys.stderr)
        return 1
    if resource is BACKUP_RESOURCE:  # a backup left "Restoring" by a restore that is gone: Available again
        obj = cli.get("sharebackups", name)
        if (obj.get("status") or {}).get("phase") == "Restoring":
            cli.custom.patch_namespaced_custom_object_status(
                "savepoint.dev", "v1alpha1", cli.namespace, "sharebackups", name,
                {"status": {"phase": "Available", "message": "state reset by an administrator"}})
    print(f"{resource.kind.lower()}/{name}: savepoint state reset" + (f" (was {previous!r})" if previous else ""))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl savepoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--namespace")
    p.add_argument("--context")
    p.add_argument("--kubeconfig")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-o", "--output", choices=["yaml", "json"])
        sp.add_argument("--wait", action="store_true", help="follow to the end; exit 1 if it failed")
        sp.add_argument("--timeout", type=float, default=3600)

    r = sub.add_parser("revert", help="revert a PVC in place to its most recent snapshot")
    r.add_argument("pvc")
    r.add_argument("--to", required=True, help="RBD snapshot name, or volumesnapshot/NAME")
    r.add_argument("--name", help="name of the VolumeRevert (generated if not given)")
    r.add_argument("--no-safety-snapshot", action="store_true")
    r.add_argument("--deadline", type=int)
    common(r)
    r.set_defaults(fn=cmd_revert)
    si = sub.add_parser("snapshot-image", help="snapshot an RBD volume into an image pool (clone + flatten, or copy)")
    si.add_argument("source", help="PVC name (or pvc/NAME); administrators: rbd:POOL/IMAGE with --cluster-id")
    si.add_argument("--pool", help="destination pool (default: the operator's image pool)")
    si.add_argument("--image", help="destination image name (default: generated)")
    si.add_argument("--method", choices=["Auto", "Clone", "Copy"], default="Auto",
                    help="Auto: clone, falling back to a copy; Clone: never copy; Copy: always copy")
    si.add_argument("--retain", action="store_true", help="keep the image when the ImageSnapshot is deleted")
    si.add_argument("--cluster-id", help="ceph-csi clusterID, for an rbd: source")
    si.add_argument("--name", help="name of the ImageSnapshot (generated if not given)")
    si.add_argument("--deadline", type=int)
    common(si)
    si.set_defaults(fn=cmd_snapshot_image)
    for verb in ("status", "describe"):
        s = sub.add_parser(verb, help="a readable summary of a Savepoint resource")
        s.add_argument("kind")
        s.add_argument("name")
        common(s)
        s.set_defaults(fn=cmd_status)
    from savepoint import cli_backups  # backup, restore, backups list|import

    cli_backups.add_parsers(sub, common)
    rs = sub.add_parser("reset-state", help="clear a PVC's savepoint.dev/state error after fixing its cause")
    rs.add_argument("target", help="pvc/NAME or volumesnapshot/NAME")
    rs.add_argument("--force", action="store_true", help="also clear a lock held by a live Savepoint action")
    rs.set_defaults(fn=cmd_reset_state)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(Cli(args), args)
    except Exception as exc:  # noqa: BLE001 - a CLI prints the API's answer, not a traceback
        body = getattr(exc, "body", None)
        detail = json.loads(body).get("message") if body and body.startswith("{") else str(exc)
        print(f"error: {detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""``kubectl savepoint``: create Savepoint actions, follow, list and delete them, reset volume states.

Follows kubectl's conventions: ``-n/--namespace``, ``--context``,
``--kubeconfig``, ``-o yaml|json|name`` and ``-A/--all-namespaces`` are
accepted anywhere on the line; ``--dry-run=client|server`` with ``-o yaml``
prints the object instead of creating it; ``--wait`` follows an action to its
end and exits 1 when it failed. Needs only the API server (no Ceph library):
what needs Ceph or the operator's rights is asked of the operator through
the API.

Shell completion: ``source <(kubectl savepoint completion bash)`` completes
``kubectl-savepoint``; ``kubectl savepoint <TAB>`` (kubectl >= 1.26) uses the
``kubectl_complete-savepoint`` executable installed with the plugin.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import sys
import time
import uuid
from typing import Any

import yaml

from savepoint.kube import resetrequest

GROUP, VERSION = "savepoint.dev", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
# Every way kubectl would name a kind -> (Kind, plural).
KINDS: dict[str, tuple[str, str]] = {}
for _kind, _plural, _short in (("VolumeRevert", "volumereverts", "vrev"), ("ShareBackup", "sharebackups", "sbak"),
                               ("ShareRestore", "sharerestores", "srst"), ("ImageSnapshot", "imagesnapshots", "isnap")):
    for _alias in (_kind.lower(), _plural, _short, f"{_plural}.{GROUP}", f"{_kind.lower()}.{GROUP}"):
        KINDS[_alias] = (_kind, _plural)
PLURALS = {kind: plural for kind, plural in KINDS.values()}
FINAL = {"Succeeded", "Failed", "Available"}
# Objects whose Savepoint state reset-state can clear: name -> (kind, group, version, plural).
RESET_TARGETS: dict[str, tuple[str, str, str, str]] = {}
for _names, _target in ((("pvc", "persistentvolumeclaim", "persistentvolumeclaims"),
                         ("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims")),
                        (("volumesnapshot", "volumesnapshots", "vs"),
                         ("VolumeSnapshot", "snapshot.storage.k8s.io", "v1", "volumesnapshots")),
                        (("sharebackup", "sharebackups", "sbak"), ("ShareBackup", GROUP, VERSION, "sharebackups"))):
    for _name in _names:
        RESET_TARGETS[_name] = _target


class UsageError(Exception):
    """A mistake on the command line: exit 2 with the message."""


def kind_of(text: str) -> tuple[str, str]:
    """(Kind, plural) for any of kubectl's names of a Savepoint kind."""
    found = KINDS.get(text.lower())
    if found is None:
        raise UsageError(f"unknown kind {text!r}; one of {', '.join(sorted({k for k, _ in KINDS.values()}))} "
                         "(or vrev, sbak, srst, isnap)")
    return found


def kind_and_name(kind: str, name: str | None) -> tuple[tuple[str, str], str | None]:
    """``KIND NAME`` or ``KIND/NAME`` as kubectl accepts both."""
    if "/" in kind:
        if name:
            raise UsageError(f"give {kind} or {kind.split('/')[0]} {name}, not both")
        kind, name = kind.split("/", 1)
    return kind_of(kind), name or None


class Cli:
    """The API clients and the namespace, from --kubeconfig/--context/-n like kubectl."""

    def __init__(self, args: argparse.Namespace) -> None:
        from kubernetes import client, config

        config.load_kube_config(config_file=args.kubeconfig, context=args.context)
        self.api = client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.all_namespaces = bool(getattr(args, "all_namespaces", False))
        if args.namespace:
            self.namespace = args.namespace
        else:
            contexts, active = config.list_kube_config_contexts(config_file=args.kubeconfig)
            if args.context:
                active = next((c for c in contexts if c["name"] == args.context), active)
            self.namespace = (active or {}).get("context", {}).get("namespace") or "default"

    def body(self, kind: str, name: str, spec: dict[str, Any], meta: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": kind,
                "metadata": {"name": name, "namespace": self.namespace, **(meta or {})}, "spec": spec}

    def create(self, body: dict[str, Any], dry_run: str = "none") -> dict[str, Any]:
        """Create (or with ``dry_run`` client: only return; server: let the API server validate and default)."""
        if dry_run == "client":
            return body
        plural = PLURALS[body["kind"]]
        extra = {"dry_run": "All"} if dry_run == "server" else {}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, body, **extra)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)

    def list(self, plural: str) -> list[dict[str, Any]]:
        if self.all_namespaces:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, plural)["items"]


# ---- showing objects ------------------------------------------------------------------------


def _bar(percent: int, width: int = 30) -> str:
    filled = int(width * percent / 100)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {percent:3d}%"


def ready_reason(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
    return (ready or {}).get("reason") or "-"


def summary(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    lines = [f"{obj['kind']}/{obj['metadata']['name']}  phase={st.get('phase', '-')}"]
    if ready_reason(obj) != "-":
        lines.append(f"  reason:  {ready_reason(obj)}")
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


def qualified(obj: dict[str, Any]) -> str:
    """``volumerevert.savepoint.dev/NAME``, as ``kubectl -o name`` prints it."""
    return f"{obj['kind'].lower()}.{GROUP}/{obj['metadata']['name']}"


def output(obj: Any, fmt: str | None) -> None:
    if fmt == "json":
        print(json.dumps(obj, indent=2, default=str))
    elif fmt == "yaml":
        print(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False), end="")
    elif fmt == "name":
        for item in obj if isinstance(obj, list) else [obj]:
            print(qualified(item))
    elif isinstance(obj, list):
        print("\n".join(summary(o) for o in obj))
    else:
        print(summary(obj))


def as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Several objects as kubectl prints them with -o yaml/json: one List."""
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


def table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def age(stamp: str | None) -> str:
    if not stamp:
        return "-"
    import datetime

    when = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(datetime.UTC) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


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


def created(cli: Cli, args: argparse.Namespace, body: dict[str, Any]) -> int:
    """Create ``body`` (or not, with --dry-run) and report it like ``kubectl create``."""
    dry_run = getattr(args, "dry_run", "none") or "none"
    obj = cli.create(body, dry_run)
    if args.output:
        output(obj, args.output)
    else:
        print(f"{qualified(obj)} created" + {"none": "", "client": " (dry run)", "server": " (server dry run)"}[dry_run])
    if args.wait and dry_run == "none":
        return follow(cli, PLURALS[obj["kind"]], obj["metadata"]["name"], args.timeout)
    return 0


# ---- creating actions -----------------------------------------------------------------------


def cmd_revert(cli: Cli, args: argparse.Namespace) -> int:
    pvc = args.pvc.removeprefix("pvc/")
    snapshot = ({"volumeSnapshot": {"name": args.to.split("/", 1)[1]}} if args.to.startswith("volumesnapshot/")
                else {"rbdSnapshot": args.to})
    spec: dict[str, Any] = {"volume": {"persistentVolumeClaim": {"name": pvc}}, "snapshot": snapshot,
                            "safetySnapshot": not args.no_safety_snapshot}
    if args.deadline:
        spec["deadlineSeconds"] = args.deadline
    name = args.name or f"revert-{pvc}-{uuid.uuid4().hex[:5]}"[:63]
    return created(cli, args, cli.body("VolumeRevert", name, spec))


def cmd_snapshot_image(cli: Cli, args: argparse.Namespace) -> int:
    if args.source.startswith("rbd:"):  # administrators: rbd:POOL/IMAGE (raw references must be allowed)
        pool, _, image = args.source[4:].partition("/")
        if not pool or not image or not args.cluster_id:
            raise UsageError("a raw source is rbd:POOL/IMAGE and needs --cluster-id")
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
    return created(cli, args, cli.body("ImageSnapshot", name, spec))


# ---- reading, listing, deleting -------------------------------------------------------------


def _events(cli: Cli, namespace: str, name: str, kind: str) -> list[Any]:
    events = cli.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name},"
                                                                      f"involvedObject.kind={kind}")
    return sorted(events.items, key=lambda e: str(e.last_timestamp or e.event_time or ""))


def cmd_status(cli: Cli, args: argparse.Namespace) -> int:
    (kind, plural), name = kind_and_name(args.kind, args.name)
    if name is None:  # every one of that kind (in the namespace, or -A)
        items = sorted(cli.list(plural), key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))
        if args.output in ("yaml", "json"):
            output(as_list(items), args.output)
        elif args.output == "name" or not items:
            output(items, "name")
            if not items:
                print(f"No {plural} found" + ("" if cli.all_namespaces else f" in {cli.namespace} namespace."),
                      file=sys.stderr)
        else:
            for obj in items:
                prefix = f"{obj['metadata']['namespace']}/" if cli.all_namespaces else ""
                print(prefix + summary(obj))
        return 0
    if cli.all_namespaces:
        raise UsageError("a NAME is looked up in one namespace: drop -A or the NAME")
    if args.wait:
        return follow(cli, plural, name, args.timeout)
    obj = cli.get(plural, name)
    output(obj, args.output)
    if not args.output:
        recent = _events(cli, cli.namespace, name, kind)[-5:]
        if recent:
            print("  events:")
            for e in recent:
                print(f"    {e.type:7s} {e.reason:22s} {e.message}")
    return 0


def cmd_list(cli: Cli, args: argparse.Namespace) -> int:
    plurals = [kind_of(k)[1] for k in args.kinds] if args.kinds else list(PLURALS.values())
    items = [o for p in dict.fromkeys(plurals) for o in cli.list(p)]
    items.sort(key=lambda o: (o["metadata"]["namespace"], o["kind"], o["metadata"]["name"]))
    if args.output in ("yaml", "json"):
        output(as_list(items), args.output)
        return 0
    if args.output == "name":
        output(items, "name")
        return 0
    if not items:
        print("No Savepoint resources found" + ("." if cli.all_namespaces else f" in {cli.namespace} namespace."),
              file=sys.stderr)
        return 0
    rows: list[tuple[str, ...]] = [(("NAMESPACE",) if cli.all_namespaces else ()) +
                                   ("NAME", "PHASE", "REASON", "PROGRESS", "SOURCE", "AGE")]
    for o in items:
        st = o.get("status") or {}
        progress = st.get("progress") or {}
        rows.append(((o["metadata"]["namespace"],) if cli.all_namespaces else ()) + (
            f"{o['kind'].lower()}/{o['metadata']['name']}", st.get("phase") or "-", ready_reason(o),
            f"{progress['percent']}%" if progress.get("percent") is not None else "-", st.get("source") or "-",
            age(o["metadata"].get("creationTimestamp"))))
    table(rows)
    return 0


def _gone(cli: Cli, plural: str, name: str, timeout: float) -> bool:
    """Wait (watching) until the object is gone; False on timeout."""
    from kubernetes import watch

    try:
        obj = cli.get(plural, name)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "status", None) == 404:
            return True
        raise
    w = watch.Watch()
    for event in w.stream(cli.custom.list_namespaced_custom_object, GROUP, VERSION, cli.namespace, plural,
                          field_selector=f"metadata.name={name}",
                          resource_version=obj["metadata"]["resourceVersion"], timeout_seconds=max(1, int(timeout))):
        if event["type"] == "DELETED":
            w.stop()
            return True
    return False


def cmd_delete(cli: Cli, args: argparse.Namespace) -> int:
    (kind, plural), first = kind_and_name(args.kind, args.names[0] if args.names else None)
    names = ([first] if first else []) + list(args.names[1:] if args.names else [])
    if not names:
        raise UsageError("delete needs a NAME (or KIND/NAME)")
    code = 0
    for name in names:
        if args.dry_run != "none":
            print(f"{kind.lower()}.{GROUP} \"{name}\" deleted ({'server ' if args.dry_run == 'server' else ''}dry run)")
            if args.dry_run == "server":
                cli.custom.delete_namespaced_custom_object(GROUP, VERSION, cli.namespace, plural, name, dry_run="All")
            continue
        try:
            cli.custom.delete_namespaced_custom_object(GROUP, VERSION, cli.namespace, plural, name)
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "status", None) == 404 and args.ignore_not_found:
                continue
            raise
        print(f"{kind.lower()}.{GROUP} \"{name}\" deleted")
        # The operator's finalizer undoes what the action holds (locks, temporary objects; a
        # ShareBackup's data unless retained): like kubectl, wait until that is done.
        if args.wait and not _gone(cli, plural, name, args.timeout):
            print(f"error: {kind.lower()}/{name} still exists after {args.timeout:.0f}s: its finalizer has not "
                  f"finished (kubectl savepoint status {kind.lower()} {name})", file=sys.stderr)
            code = 1
    return code


def cmd_logs(cli: Cli, args: argparse.Namespace) -> int:
    """What the action's movers said: their logs where the cluster serves them, else what the API keeps."""
    (kind, plural), name = kind_and_name(args.kind, args.name)
    if name is None:
        raise UsageError("logs needs KIND NAME")
    obj = cli.get(plural, name)
    uid = obj["metadata"]["uid"]
    # Movers run in the operator's namespace (they hold Ceph credentials), labelled with the CR's uid; a
    # namespace user may not read pods there, and that is by design: then only what the CR keeps is shown.
    movers_ns = args.operator_namespace
    try:
        pods = cli.core.list_namespaced_pod(movers_ns, label_selector=f"savepoint.dev/owner-uid={uid}").items
    except Exception as exc:  # noqa: BLE001 - forbidden for tenants
        print(f"mover pods run in the operator's namespace {movers_ns}, which this account cannot read "
              f"({_api_reason(exc)}); showing what {kind.lower()}/{name} keeps")
        pods = []
    shown = False
    for pod in sorted(pods, key=lambda p: str(p.metadata.creation_timestamp)):
        for cs in pod.status.container_statuses or []:
            shown = True
            print(f"== pod/{pod.metadata.name} container {cs.name}: {_state(cs)}")
            try:
                text = cli.core.read_namespaced_pod_log(pod.metadata.name, movers_ns, container=cs.name,
                                                        tail_lines=args.tail)
                print(text, end="" if text.endswith("\n") else "\n")
            except Exception as exc:  # noqa: BLE001 - no kubelet log API (the sandbox), or the pod is gone
                term = cs.state.terminated if cs.state else None
                print(f"   (log not readable through the API server: {_api_reason(exc)})")
                if term and term.message:
                    print("   termination message (the mover's result, or on failure the tail of its log):")
                    print("\n".join("   | " + line for line in term.message.splitlines()))
    if not shown:
        print(f"no mover pod of {kind.lower()}/{name} exists now "
              f"(movers are removed when their step ends)")
    failures = [e for e in _events(cli, cli.namespace, name, kind) if e.type == "Warning"]
    st = obj.get("status") or {}
    if failures or st.get("phase") == "Failed":
        print(f"== what {kind.lower()}/{name} kept (status and Warning events):")
        if st.get("message"):
            print(f"   status: {st.get('phase')} {ready_reason(obj)}: {st['message']}")
        for e in failures[-args.events:]:
            print(f"   event:  {e.reason}: {e.message}")
    return 0


def _state(cs: Any) -> str:
    state = cs.state
    if state and state.running:
        return f"running since {state.running.started_at}"
    if state and state.terminated:
        t = state.terminated
        return f"terminated ({t.reason}, exit code {t.exit_code}) at {t.finished_at}"
    if state and state.waiting:
        return f"waiting ({state.waiting.reason}: {state.waiting.message or ''})"
    return "unknown"


def _api_reason(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, str) and body.startswith("{"):
        try:
            return str(json.loads(body).get("message"))[:200]
        except ValueError:
            pass
    return f"{type(exc).__name__}: {str(exc)[:200]}"


# ---- version --------------------------------------------------------------------------------


def plugin_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("savepoint-operator")
    except metadata.PackageNotFoundError:  # run from a zipapp or a source tree
        from savepoint import __version__

        return __version__


def operator_versions(cli: Cli) -> tuple[list[dict[str, str]], str | None]:
    """The operator Deployments the cluster shows (namespace, name, version label, image); or why none."""
    from kubernetes import client

    apps = client.AppsV1Api(cli.api)
    selector = "app.kubernetes.io/part-of=savepoint,app.kubernetes.io/component=operator"
    try:
        deployments = apps.list_deployment_for_all_namespaces(label_selector=selector).items
    except Exception as exc:  # noqa: BLE001 - a tenant may not list Deployments cluster-wide
        return [], f"cannot list Deployments ({_api_reason(exc)})"
    found = []
    for dep in deployments:
        labels = dep.metadata.labels or {}
        containers = dep.spec.template.spec.containers
        found.append({"namespace": dep.metadata.namespace, "name": dep.metadata.name,
                      "version": labels.get("app.kubernetes.io/version", "unknown"),
                      "chart": labels.get("helm.sh/chart", ""), "image": containers[0].image if containers else "",
                      "replicas": str(dep.spec.replicas if dep.spec.replicas is not None else 1)})
    return found, None if found else "no operator Deployment (labels " + selector + ") found"


def cmd_version(cli: Cli | None, args: argparse.Namespace) -> int:
    mine = plugin_version()
    found, why = operator_versions(cli) if cli is not None else ([], "not asked (--client)")
    if args.output in ("json", "yaml"):
        doc = {"plugin": {"version": mine}, "operators": found, **({"note": why} if why else {})}
        output(doc, args.output)
        return 0
    print(f"Plugin version: {mine}")
    if why:
        print(f"Operator version: unknown: {why}")
    for dep in found:
        print(f"Operator version: {dep['version']} (deployment {dep['namespace']}/{dep['name']}, image {dep['image']}, "
              f"replicas {dep['replicas']})")
        if dep["version"].lstrip("v") != mine.lstrip("v"):
            print(f"WARNING: plugin {mine} and operator {dep['version']} differ; the plugin writes the API "
                  f"{API_VERSION}, which both serve", file=sys.stderr)
    return 0


# ---- reset-state ----------------------------------------------------------------------------


def cmd_reset_state(cli: Cli, args: argparse.Namespace) -> int:
    kind, _, name = args.target.partition("/")
    target = RESET_TARGETS.get(kind.lower())
    if target is None or not name:
        raise UsageError("reset-state takes pvc/NAME, volumesnapshot/NAME or sharebackup/NAME")
    kind_name, group, version, plural = target
    request = resetrequest.Request(uuid.uuid4().hex[:12], args.force)
    patch = {"metadata": {"annotations": {resetrequest.REQUEST: request.to_annotation()}}}
    if group == "":
        obj = cli.api.sanitize_for_serialization(cli.core.patch_namespaced_persistent_volume_claim(name, cli.namespace, patch))

        def lister(**kw: Any) -> Any:
            return cli.core.list_namespaced_persistent_volume_claim(cli.namespace, **kw)
    else:
        obj = cli.custom.patch_namespaced_custom_object(group, version, cli.namespace, plural, name, patch,
                                                        _content_type="application/merge-patch+json")

        def lister(**kw: Any) -> Any:
            return cli.custom.list_namespaced_custom_object(group, version, cli.namespace, plural, **kw)
    version_seen = obj["metadata"]["resourceVersion"]
    result = _answer(cli, lister, name, version_seen, request.id, args.timeout)
    if result is None:
        print(f"error: the operator did not answer within {args.timeout:.0f}s. Is it running, and does it serve "
              f"namespace {cli.namespace}? The request stays on {kind_name} {name} (annotation "
              f"{resetrequest.REQUEST}) and is answered when the operator runs.", file=sys.stderr)
        return 1
    # Read: leave no Savepoint annotation behind (the Event keeps the answer).
    done = {"metadata": {"annotations": {resetrequest.RESULT: None}}}
    try:
        if group == "":
            cli.core.patch_namespaced_persistent_volume_claim(name, cli.namespace, done)
        else:
            cli.custom.patch_namespaced_custom_object(group, version, cli.namespace, plural, name, done,
                                                      _content_type="application/merge-patch+json")
    except Exception as exc:  # noqa: BLE001 - the answer stands; a stale result annotation is harmless
        print(f"note: could not remove {resetrequest.RESULT}: {_api_reason(exc)}", file=sys.stderr)
    print(result.message, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def _answer(cli: Cli, lister: Any, name: str, since: str, request_id: str,
            timeout: float) -> resetrequest.Result | None:
    """Watch the object from ``since`` until the result of ``request_id`` appears."""
    from kubernetes import watch

    def result_of(obj: Any) -> resetrequest.Result | None:
        obj = obj if isinstance(obj, dict) else cli.api.sanitize_for_serialization(obj)
        found = resetrequest.parse_result(((obj.get("metadata") or {}).get("annotations") or {}).get(resetrequest.RESULT))
        return found if found is not None and found.id == request_id else None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w = watch.Watch()
        try:
            for event in w.stream(lister, field_selector=f"metadata.name={name}", resource_version=since,
                                  timeout_seconds=max(1, int(deadline - time.monotonic()))):
                if event["type"] == "ERROR":  # e.g. 410 Gone: list again below
                    w.stop()
                    break
                found = result_of(event["object"])
                if found is not None:
                    w.stop()
                    return found
        except Exception as exc:  # noqa: BLE001 - 410 Gone raised instead of sent: list again
            if getattr(exc, "status", None) != 410:
                raise
        current = lister(field_selector=f"metadata.name={name}")
        current = current if isinstance(current, dict) else cli.api.sanitize_for_serialization(current)
        for item in current["items"]:
            found = result_of(item)
            if found is not None:
                return found
        since = current["metadata"]["resourceVersion"]
    return None


# ---- completion -----------------------------------------------------------------------------


def cmd_completion(_: Cli | None, args: argparse.Namespace) -> int:
    import argcomplete

    print(argcomplete.shellcode(["kubectl-savepoint"], shell=args.shell), end="")
    return 0


def _complete_names(prefix: str, parsed_args: argparse.Namespace, plural: str | None = None, **_: Any) -> list[str]:
    """Names of Savepoint objects (or PVCs) in the namespace the line names, for completion."""
    try:
        # A subcommand's parsed args lack the global flags not given on the line (their default is SUPPRESS).
        flags = argparse.Namespace(**{k: getattr(parsed_args, k, None) for k in ("namespace", "context", "kubeconfig")},
                                   all_namespaces=getattr(parsed_args, "all_namespaces", False))
        cli = Cli(flags)
        if plural is None:
            kind = getattr(parsed_args, "kind", "") or ""
            if "/" in kind or kind.lower() not in KINDS:
                return []
            plural = KINDS[kind.lower()][1]
        if plural == "persistentvolumeclaims":
            return [p.metadata.name for p in cli.core.list_namespaced_persistent_volume_claim(cli.namespace).items]
        return [o["metadata"]["name"] for o in cli.list(plural)]
    except Exception:  # noqa: BLE001 - completion never prints errors into the shell
        return []


def _complete_kinds(prefix: str, parsed_args: argparse.Namespace | None = None, **_: Any) -> list[str]:
    """Kinds, or KIND/NAME once a ``/`` is typed (argparse gives an optional NAME no turn of its own)."""
    if "/" in prefix and parsed_args is not None:
        kind = prefix.split("/", 1)[0]
        if kind.lower() not in KINDS:
            return []
        return [f"{kind}/{n}" for n in _complete_names(prefix, parsed_args, plural=KINDS[kind.lower()][1])]
    return sorted({"volumerevert", "sharebackup", "sharerestore", "imagesnapshot", "vrev", "sbak", "srst", "isnap"})


def _complete_reset_targets(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    if "/" not in prefix:
        return ["pvc/", "volumesnapshot/", "sharebackup/"]
    kind = prefix.split("/", 1)[0]
    plural = {"pvc": "persistentvolumeclaims", "sharebackup": "sharebackups"}.get(kind)
    if plural is None:
        return []
    return [f"{kind}/{n}" for n in _complete_names(prefix, parsed_args, plural=plural)]


def complete_main(argv: list[str] | None = None) -> int:
    """``kubectl_complete-savepoint ARGS... PARTIAL``: kubectl's plugin completion protocol
    (one candidate a line, then ``:<cobra directive>``), answered by argcomplete from this parser."""
    import argcomplete

    words = list(sys.argv[1:] if argv is None else argv) or [""]
    line = shlex.join(["kubectl-savepoint", *words[:-1]]) + " " + words[-1]
    out = io.StringIO()

    class Done(Exception):
        pass

    def stop(code: int = 0) -> None:
        raise Done()

    saved = dict(os.environ)
    os.environ.update(_ARGCOMPLETE="1", _ARGCOMPLETE_IFS="\n", COMP_LINE=line, COMP_POINT=str(len(line)),
                      _ARGCOMPLETE_SUPPRESS_SPACE="1")
    try:
        argcomplete.autocomplete(parser(), output_stream=out, exit_method=stop,
                                 default_completer=argcomplete.completers.SuppressCompleter())
    except Done:
        pass
    finally:
        os.environ.clear()
        os.environ.update(saved)
    candidates = [c.rstrip() for c in out.getvalue().split("\n") if c.strip()]
    print("\n".join(candidates + [":4"]))  # 4: ShellCompDirectiveNoFileComp
    return 0


def krew_main() -> int:
    """The krew build's one executable: ``kubectl-savepoint``, or kubectl's completer when linked as
    ``kubectl_complete-savepoint``."""
    if os.path.basename(sys.argv[0]).startswith("kubectl_complete-"):
        return complete_main()
    return main()


# ---- the parser -----------------------------------------------------------------------------


def _global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """kubectl's global flags. On subcommands their default is SUPPRESS, so a value given
    before the subcommand is not reset by the subcommand's parser: accepted anywhere."""
    d: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("kubectl options (accepted anywhere on the line)")
    g.add_argument("-n", "--namespace", help="the namespace (default: the context's)", **d)
    g.add_argument("--context", help="the kubeconfig context to use", **d)
    g.add_argument("--kubeconfig", help="path to the kubeconfig file", **d)
    g.add_argument("-o", "--output", choices=["yaml", "json", "name"], help="print objects in this format", **d)
    g.add_argument("-A", "--all-namespaces", action="store_true",
                   help="list, status, backups list: every namespace", **d)


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl savepoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=kw.pop("description", help),
                            formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
        _global_options(sp, top=False)
        return sp

    def common(sp: argparse.ArgumentParser, *, create: bool = True) -> None:
        sp.add_argument("--wait", action="store_true", help="follow to the end; exit 1 if it failed")
        sp.add_argument("--timeout", type=float, default=3600, help="seconds --wait follows (default 3600)")
        if create:
            sp.add_argument("--dry-run", nargs="?", const="client", default="none", choices=["none", "client", "server"],
                            help="client: only print the object (with -o yaml); server: the API server validates it, "
                                 "nothing is created")

    r = add("revert", "revert a PVC in place to its most recent snapshot")
    r.add_argument("pvc", help="the PVC (NAME or pvc/NAME)").completer = (  # type: ignore[attr-defined]
        lambda prefix, parsed_args, **_: _complete_names(prefix, parsed_args, plural="persistentvolumeclaims"))
    r.add_argument("--to", required=True, help="RBD snapshot name, or volumesnapshot/NAME")
    r.add_argument("--name", help="name of the VolumeRevert (generated if not given)")
    r.add_argument("--no-safety-snapshot", action="store_true")
    r.add_argument("--deadline", type=int)
    common(r)
    r.set_defaults(fn=cmd_revert)

    si = add("snapshot-image", "snapshot an RBD volume into an image pool (clone + flatten, or copy)")
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

    from savepoint.cli import backups as cli_backups  # backup, restore, backups list|import

    cli_backups.add_parsers(add, common)
    from savepoint.cli import schedules as cli_schedules  # schedule create|list|suspend|resume|run-now

    cli_schedules.add_parsers(add, common)

    ls = add("list", "list Savepoint actions and backups (all four kinds, or the KINDs given)")
    ls.add_argument("kinds", nargs="*", metavar="KIND", help="only these kinds (vrev, sbak, srst, isnap, ...)")
    ls.set_defaults(fn=cmd_list)
    for verb in ("status", "describe"):
        s = add(verb, "a readable summary of a Savepoint resource (without NAME: of every one of that kind)")
        s.add_argument("kind", help="KIND or KIND/NAME").completer = _complete_kinds  # type: ignore[attr-defined]
        s.add_argument("name", nargs="?").completer = _complete_names  # type: ignore[attr-defined]
        common(s, create=False)
        s.set_defaults(fn=cmd_status)
    d = add("delete", "delete Savepoint resources (waits for the operator's cleanup, like kubectl delete)",
            description="Delete Savepoint resources. Deleting a running action stops it through its undo "
                        "(locks released, temporary objects removed); deleting a ShareBackup deletes its data in "
                        "the repository unless it is retained (annotation savepoint.dev/deletion-policy: Retain).")
    d.add_argument("kind", help="KIND or KIND/NAME").completer = _complete_kinds  # type: ignore[attr-defined]
    d.add_argument("names", nargs="*", metavar="NAME").completer = _complete_names  # type: ignore[attr-defined]
    d.add_argument("--wait", type=_bool, nargs="?", const=True, default=True,
                   help="wait until the object is gone (default true; --wait=false returns at once)")
    d.add_argument("--timeout", type=float, default=600, help="seconds to wait (default 600)")
    d.add_argument("--ignore-not-found", action="store_true", help="a missing object is no error")
    d.add_argument("--dry-run", nargs="?", const="client", default="none", choices=["none", "client", "server"])
    d.set_defaults(fn=cmd_delete)
    lg = add("logs", "what an action's movers said (see the help: where the cluster keeps no logs)",
             description="Show what the mover Jobs of an action said. While a mover pod exists its log is read "
                         "through the API server (like kubectl logs); where that is impossible (the pod is gone, or "
                         "a cluster without the kubelet log API, such as Savepoint's development sandbox) this "
                         "shows what the API keeps instead: each mover container's state and termination message "
                         "(the mover's result, or on failure the tail of its log) and the action's status and "
                         "Warning events. It never shows more than the cluster keeps.")
    lg.add_argument("kind", help="KIND or KIND/NAME").completer = _complete_kinds  # type: ignore[attr-defined]
    lg.add_argument("name", nargs="?").completer = _complete_names  # type: ignore[attr-defined]
    lg.add_argument("--operator-namespace", default="savepoint-system",
                    help="the namespace the operator and its movers run in (default: savepoint-system)")
    lg.add_argument("--tail", type=int, default=200, help="lines of each log (default 200)")
    lg.add_argument("--events", type=int, default=5, help="Warning events shown (default 5)")
    lg.set_defaults(fn=cmd_logs)

    rs = add("reset-state", "clear a volume's (or backup's) savepoint.dev/state after fixing its cause",
             description="Clear savepoint.dev/state (e.g. error, backup-restoring-error) on a PVC, a "
                         "VolumeSnapshot or a ShareBackup after checking its data, so that waiting actions go on. "
                         "A lock whose action no longer exists goes too; a live action's lock only with --force. "
                         "The operator does the reset: this writes a request annotation "
                         f"({resetrequest.REQUEST}) and prints the operator's answer.")
    rs.add_argument("target", help="pvc/NAME, volumesnapshot/NAME or sharebackup/NAME").completer = (  # type: ignore[attr-defined]
        _complete_reset_targets)
    rs.add_argument("--force", action="store_true", help="also clear a lock held by a live Savepoint action")
    rs.add_argument("--timeout", type=float, default=60, help="seconds to wait for the operator's answer (default 60)")
    rs.set_defaults(fn=cmd_reset_state)

    v = add("version", "the plugin's version and the operator's (from its Deployment in the cluster)")
    v.add_argument("--client", action="store_true", help="only the plugin's version; do not ask the cluster")
    v.set_defaults(fn=cmd_version, offline=lambda a: a.client)
    c = add("completion", "print a shell completion script: source <(kubectl savepoint completion bash)")
    c.add_argument("shell", choices=["bash", "zsh", "fish", "tcsh"])
    c.set_defaults(fn=cmd_completion, offline=lambda a: True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        offline = getattr(args, "offline", None)
        cli = None if offline and offline(args) else Cli(args)
        return int(args.fn(cli, args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a CLI prints the API's answer, not a traceback
        body = getattr(exc, "body", None)
        detail = json.loads(body).get("message") if isinstance(body, str) and body.startswith("{") else str(exc)
        print(f"error: {detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

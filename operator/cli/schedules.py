"""``kubectl savepoint schedule create|list|suspend|resume|run-now``: SavepointSchedules from the plugin.

Registered by ``savepoint.cli.main`` (``add_parsers``), with the same conventions: ``-n``, ``-o yaml|json``,
``--wait`` (``create``: until the first run's child exists; ``run-now``: until that run has ended,
exit 1 if it failed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

import yaml

GROUP, VERSION, PLURAL, KIND = "savepoint.dev", "v1alpha1", "savepointschedules", "SavepointSchedule"
RUN_NOW = "savepoint.dev/run-now"


def template_of(args: argparse.Namespace) -> dict[str, Any]:
    pvc = {"persistentVolumeClaim": {"name": args.pvc}}
    if args.what == "backup":
        spec: dict[str, Any] = {"source": pvc}
        if args.repository:
            from savepoint.cli.backups import repository_ref

            spec["repository"] = repository_ref(args.repository)
        if args.full_every:
            spec["fullEvery"] = args.full_every
        if args.force:
            spec["force"] = True
        return {"shareBackup": spec}
    if args.what == "safe-point":
        return {"safePoint": pvc}
    if args.what == "volume-snapshot":
        spec = dict(pvc)
        if args.snapshot_class:
            spec["volumeSnapshotClassName"] = args.snapshot_class
        return {"volumeSnapshot": spec}
    spec = {"source": pvc}
    if args.pool:
        spec["destinationPool"] = args.pool
    return {"imageSnapshot": spec}


def retention_of(args: argparse.Namespace) -> dict[str, Any] | None:
    keys = {"keepLast": args.keep_last, "keepHourly": args.keep_hourly, "keepDaily": args.keep_daily,
            "keepWeekly": args.keep_weekly, "keepMonthly": args.keep_monthly, "keepYearly": args.keep_yearly,
            "maxAge": args.max_age}
    chosen = {k: v for k, v in keys.items() if v is not None}
    return chosen or None


def cmd_create(cli: Any, args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {"schedule": args.schedule, "timeZone": args.time_zone, "template": template_of(args),
                            "deletionPolicy": "Retain" if args.retain else "Delete"}
    retention = retention_of(args)
    if retention:
        spec["retention"] = retention
    if args.jitter:
        spec["jitterSeconds"] = args.jitter
    if args.starting_deadline:
        spec["startingDeadlineSeconds"] = args.starting_deadline
    if args.allow_concurrent:
        spec["concurrencyPolicy"] = "Allow"
    name = args.name or f"{args.pvc}-{args.what}"[:40].rstrip("-") + f"-{uuid.uuid4().hex[:4]}"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name, "namespace": cli.namespace},
            "spec": spec}
    dry_run = getattr(args, "dry_run", "none")
    if dry_run == "client":
        output(body, getattr(args, "output", None) or "yaml")
        return 0
    extra = {"dry_run": "All"} if dry_run == "server" else {}
    obj = cli.custom.create_namespaced_custom_object(GROUP, VERSION, cli.namespace, PLURAL, body, **extra)
    print(f"savepointschedule.savepoint.dev/{name} {'created (server dry run)' if extra else 'created'}")
    if extra:
        return 0
    if args.wait:
        obj = wait(cli, name, lambda s: bool(s.get("lastScheduleTime") and not s.get("pendingRun")), args.timeout)
        if obj is None:
            return 2
    if getattr(args, "output", None):
        output(obj, args.output)
    return 0


def wait(cli: Any, name: str, done: Any, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        obj = cli.get(PLURAL, name)
        if done(obj.get("status") or {}):
            return obj
        if time.monotonic() > deadline:
            print(f"timed out after {timeout:.0f}s waiting for {name}", file=sys.stderr)
            return None
        time.sleep(1)


def _age(stamp: str | None) -> str:
    from savepoint.cli.backups import _age as age

    return age(stamp)


def row(obj: dict[str, Any]) -> tuple[str, ...]:
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    kind = next(iter((spec.get("template") or {}) or {"-": None}))
    failed = next((c for c in st.get("conditions") or [] if c.get("type") == "LastRunFailed"), {})
    return (obj["metadata"]["name"], spec.get("schedule", ""), kind, str(bool(spec.get("suspend"))).lower(),
            _age(st.get("lastSuccessfulTime")) if st.get("lastSuccessfulTime") else "-",
            st.get("nextScheduleTime") or "-", str(st.get("kept", "-")), st.get("active") or "-",
            failed.get("reason", "-") if failed.get("status") == "True" else "-")


def cmd_list(cli: Any, args: argparse.Namespace) -> int:
    items = cli.custom.list_namespaced_custom_object(GROUP, VERSION, cli.namespace, PLURAL)["items"]
    if getattr(args, "output", None):
        output({"apiVersion": "v1", "kind": "List", "items": items}, args.output)
        return 0
    rows = [("NAME", "SCHEDULE", "TEMPLATE", "SUSPENDED", "LAST SUCCESS", "NEXT RUN", "KEPT", "ACTIVE", "LAST RUN FAILED")]
    rows += [row(o) for o in sorted(items, key=lambda o: o["metadata"]["name"])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_suspend(cli: Any, args: argparse.Namespace, suspend: bool) -> int:
    obj = cli.custom.patch_namespaced_custom_object(GROUP, VERSION, cli.namespace, PLURAL, args.name,
                                                    {"spec": {"suspend": suspend}})
    print(f"savepointschedule.savepoint.dev/{args.name} {'suspended' if suspend else 'resumed'}")
    if args.wait:
        phase = "Suspended" if suspend else "Active"
        obj = wait(cli, args.name, lambda s: s.get("phase") == phase, args.timeout)
        if obj is None:
            return 2
    if getattr(args, "output", None):
        output(obj, args.output)
    return 0


def cmd_run_now(cli: Any, args: argparse.Namespace) -> int:
    token = f"{time.time():.3f}"
    cli.custom.patch_namespaced_custom_object(GROUP, VERSION, cli.namespace, PLURAL, args.name,
                                              {"metadata": {"annotations": {RUN_NOW: token}}})
    print(f"savepointschedule.savepoint.dev/{args.name}: run requested")
    if not args.wait:
        return 0
    obj = wait(cli, args.name, lambda s: s.get("runNowHandled") == token and not s.get("pendingRun"), args.timeout)
    if obj is None:
        return 2
    child = obj["status"].get("lastChild")
    print(f"run started: {child}")
    obj = wait(cli, args.name, lambda s: s.get("active") != child, args.timeout)
    if obj is None:
        return 2
    failed = next((c for c in obj["status"].get("conditions") or [] if c.get("type") == "LastRunFailed"), {})
    if failed.get("status") == "True" and failed.get("message", "").startswith(f"{child}:"):
        print(f"run failed: {failed.get('reason')}: {failed.get('message')}", file=sys.stderr)
        return 1
    print(f"run succeeded: {child}")
    if getattr(args, "output", None):
        output(obj, args.output)
    return 0


def output(obj: dict[str, Any], fmt: str | None) -> None:
    if fmt == "json":
        print(json.dumps(obj, indent=2, default=str))
    elif fmt == "yaml":
        print(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def add_parsers(add: Any, common: Any) -> None:
    """Register ``schedule VERB``; ``add(name, help)`` makes a subcommand parser with kubectl's global flags."""
    from savepoint.cli.main import _global_options

    sc = add("schedule", "SavepointSchedules: create, list, suspend, resume, run-now")
    verbs = sc.add_subparsers(dest="schedule_command", required=True, metavar="VERB")

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        sp = verbs.add_parser(name, help=help, description=help)
        _global_options(sp, top=False)
        return sp

    c = verb("create", "run backups, safe points, VolumeSnapshots or images of a PVC on a schedule")
    c.add_argument("what", choices=["backup", "safe-point", "volume-snapshot", "image"])
    c.add_argument("pvc", help="the PVC of this namespace")
    c.add_argument("--schedule", required=True, help="5-field cron, @hourly/@daily/@weekly/@monthly, or @every 30s")
    c.add_argument("--time-zone", default="UTC", help="IANA time zone of the cron fields (default UTC)")
    c.add_argument("--jitter", type=int, help="start each run up to this many seconds late (spread)")
    c.add_argument("--starting-deadline", type=int, help="skip a missed slot older than this many seconds")
    c.add_argument("--allow-concurrent", action="store_true", help="concurrencyPolicy Allow (default Forbid)")
    c.add_argument("--retain", action="store_true", help="keep the children when the schedule is deleted")
    for keep in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        c.add_argument(f"--keep-{keep}", type=int)
    c.add_argument("--max-age", help="prune children older than this (e.g. 30d)")
    c.add_argument("--repository", help="backup: pvc/NAME or nfs://SERVER/PATH (default: the operator's)")
    c.add_argument("--full-every", type=int, help="backup: a full backup every N runs")
    c.add_argument("--force", action="store_true", help="backup: back up an in-use block volume")
    c.add_argument("--snapshot-class", help="volume-snapshot: the VolumeSnapshotClass")
    c.add_argument("--pool", help="image: the destination pool")
    c.add_argument("--name", help="name of the schedule (generated if not given; at most 47 characters)")
    common(c)
    c.set_defaults(fn=cmd_create)
    ls = verb("list", "this namespace's schedules: last success, next run, kept, failures")
    ls.set_defaults(fn=cmd_list)
    for name, suspend in (("suspend", True), ("resume", False)):
        s = verb(name, f"{name} a schedule")
        s.add_argument("name")
        common(s, create=False)
        s.set_defaults(fn=lambda cli, args, _s=suspend: cmd_suspend(cli, args, _s))
    r = verb("run-now", "run once now (annotation savepoint.dev/run-now)")
    r.add_argument("name")
    common(r, create=False)
    r.set_defaults(fn=cmd_run_now)

"""The operator side of movers without a cluster: where a Job runs and what it holds, fair slots,
and progress read back from a mover as untrusted input."""

from __future__ import annotations

import collections
import json

import pytest
from hypothesis import given, settings, strategies as st

from savepoint.engine import movers
from savepoint.kube import k8s
from savepoint.mover.request import MoverRequest, MoverVolume, NfsSource
from savepoint.settings import Settings

pytestmark = pytest.mark.unit

OWNER = k8s.Owner("ShareBackup", "team-a", "nightly", "0b4c1f1e-1111-4222-8333-444455556666")


def _job(request: MoverRequest, ceph: bool = False) -> dict:
    return movers.build_job(OWNER, "backup", request, Settings(namespace="sp-system"), 600,
                            "x-ceph" if ceph else None)


def test_a_job_runs_in_the_operators_namespace_with_nothing_of_the_tenant() -> None:
    request = MoverRequest(action="files-backup", run_as_root=True, volumes=[
        MoverVolume(name="repository", mount_path="/r/team-a", sub_path="team-a",
                    nfs=NfsSource(server="nfs.example", path="/backups"))])
    job = _job(request)
    assert job["metadata"]["namespace"] == "sp-system"
    assert "ownerReferences" not in job["metadata"]  # they cannot cross namespaces
    assert job["metadata"]["labels"][movers.OWNER_NAMESPACE_LABEL] == "team-a"
    pod = job["spec"]["template"]["spec"]
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert not {"SAVEPOINT_CEPH_KEY", "SAVEPOINT_CEPH_USER_ID"} & env, "no Ceph key for a step that needs none"
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "repository", "mountPath": "/r/team-a", "readOnly": False, "subPath": "team-a"}]
    assert pod["volumes"][0]["nfs"] == {"server": "nfs.example", "path": "/backups", "readOnly": False}
    caps = pod["containers"][0]["securityContext"]["capabilities"]["add"]
    baseline = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
    assert set(caps) <= baseline, "Pod Security baseline allows no more"


def test_ceph_credentials_come_from_a_secret_beside_the_job() -> None:
    job = _job(MoverRequest(action="rbd-copy", needs_ceph=True), ceph=True)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
    assert refs == {"SAVEPOINT_CEPH_MONITORS": "x-ceph", "SAVEPOINT_CEPH_USER_ID": "x-ceph",
                    "SAVEPOINT_CEPH_KEY": "x-ceph"}


def test_job_names_tell_equal_names_in_two_namespaces_apart() -> None:
    other = k8s.Owner("ShareBackup", "team-b", "nightly", "9f00aa00-1111-4222-8333-444455556666")
    assert movers.job_name(OWNER, "backup") != movers.job_name(other, "backup")
    long = k8s.Owner("ShareBackup", "team-a", "n" * 63, OWNER.uid)
    assert len(movers.job_name(long, "discard-partial")) <= 52


def test_a_sub_path_cannot_climb_out_of_the_volume() -> None:
    with pytest.raises(ValueError):
        MoverVolume(name="r", mount_path="/r", sub_path="team-a/../team-b", nfs=NfsSource(server="s", path="/p"))
    with pytest.raises(ValueError):
        MoverVolume(name="r", mount_path="/r", sub_path="/etc", nfs=NfsSource(server="s", path="/p"))


def _waiters(*entries: tuple[str, str]) -> dict[str, movers._Waiter]:
    return {uid: movers._Waiter(ns, float(i), float(i)) for i, (uid, ns) in enumerate(entries)}


def test_first_come_first_served_while_slots_are_free() -> None:
    waiters = _waiters(("a1", "a"), ("b1", "b"))
    running: collections.Counter[str] = collections.Counter()
    assert movers.admit(waiters, running, "a1", limit=4, share=2) == (True, 1)
    assert movers.admit(waiters, running, "b1", limit=4, share=2) == (True, 2)
    assert movers.admit(waiters, collections.Counter(a=4), "a1", limit=4, share=2) == (False, 1)


def test_a_namespace_at_its_share_waits_while_another_namespace_waits() -> None:
    waiters = _waiters(("a3", "a"), ("b1", "b"))
    running = collections.Counter(a=2)
    assert movers.admit(waiters, running, "a3", limit=4, share=2) == (False, 1)
    assert movers.admit(waiters, running, "b1", limit=4, share=2) == (True, 2)


def test_alone_a_namespace_may_use_every_slot() -> None:
    waiters = _waiters(("a3", "a"), ("a4", "a"))
    assert movers.admit(waiters, collections.Counter(a=2), "a3", limit=4, share=2) == (True, 1)
    assert movers.admit(waiters, collections.Counter(a=2), "a4", limit=4, share=2) == (True, 2)
    assert movers.admit(waiters, collections.Counter(a=3), "a4", limit=4, share=2) == (False, 2), "a3 goes first"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("abc"), min_size=1, max_size=12), st.integers(1, 6),
       st.dictionaries(st.sampled_from("abc"), st.integers(0, 6)))
def test_no_namespace_passes_its_share_while_another_under_it_waits(order: list[str], limit: int,
                                                                    busy: dict[str, int]) -> None:
    share = max(1, limit // 2)
    waiters = _waiters(*[(f"{ns}{i}", ns) for i, ns in enumerate(order)])
    running = collections.Counter(busy)
    for uid, waiter in waiters.items():
        admitted, _ = movers.admit(waiters, running, uid, limit=limit, share=share)
        if not admitted:
            continue
        assert sum(running.values()) < limit
        others_hungry = {w.namespace for w in waiters.values()
                         if w.namespace != waiter.namespace and running[w.namespace] < share}
        assert running[waiter.namespace] < share or not others_hungry


def test_progress_is_read_as_untrusted_input() -> None:
    good = {"percent": 40, "bytesDone": 4, "bytesTotal": 10, "files": 2}
    assert movers.parse_progress(json.dumps(good)) == good
    for bad in ("", "nope", "[]", json.dumps({"percent": 101}), json.dumps({"percent": -1}),
                json.dumps({"percent": 1, "bytesDone": "9"}), json.dumps({"percent": True}),
                json.dumps({"percent": 1, "bytesDone": 1 << 70}), json.dumps({"bytesDone": 1}),
                json.dumps({"percent": 1, "x": "y" * 2000})):
        assert movers.parse_progress(bad) is None, bad
    assert movers.parse_progress(json.dumps({"percent": 5, "extra": 1})) == {"percent": 5}


def test_owner_annotation_round_trips_and_refuses_junk() -> None:
    assert movers.parse_owner_annotation(movers._owner_annotation(OWNER)) == OWNER
    for junk in (None, "", "ShareBackup team-a nightly uid", "Pod team-a/x uid", "a b c d"):
        assert movers.parse_owner_annotation(junk) is None


def test_pod_settings_reach_the_mover_pod() -> None:
    settings = Settings(namespace="sp-system", mover_pod={
        "nodeSelector": {"pool": "backup"}, "resources": {"requests": {"cpu": "100m"}},
        "imagePullSecrets": ["regcred"], "securityContext": {"runAsUser": None}})
    pod = movers.build_job(OWNER, "copy", MoverRequest(action="rbd-copy"), settings, 60, None)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "backup"} and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "100m"}}
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def _pod(conditions: list | None = None, waiting: str | None = None) -> object:
    from kubernetes import client

    statuses = [client.V1ContainerStatus(name="mover", image="img", image_id="", ready=False, restart_count=0,
                                         state=client.V1ContainerState(waiting=client.V1ContainerStateWaiting(
                                             reason=waiting, message="pull failed")))] if waiting else None
    return client.V1Pod(status=client.V1PodStatus(conditions=conditions, container_statuses=statuses))


def test_why_a_mover_pod_does_not_start() -> None:
    from kubernetes import client

    assert movers.start_trouble([], None) is None
    assert movers.start_trouble([], 'pods "x" is forbidden: violates PodSecurity "restricted:latest"')[0] == \
        "MoverPodRefused"
    assert movers.start_trouble([], "exceeded quota: q, requested: pods=1")[0] == "MoverQuotaExceeded"
    assert movers.start_trouble([], "failed quota: q: must specify requests.cpu")[0] == "MoverQuotaExceeded"
    unschedulable = client.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable",
                                          message="0/1 nodes match the node selector")
    assert movers.start_trouble([_pod([unschedulable])], None) == ("MoverUnschedulable",
                                                                   "0/1 nodes match the node selector")
    assert movers.start_trouble([_pod(waiting="ImagePullBackOff")], None)[0] == "MoverImagePullFailed"
    assert movers.start_trouble([_pod(waiting="ContainerCreating")], None) is None

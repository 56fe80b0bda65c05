"""File-share backup logic without services: rsync command lines, its output, progress, quotas, parents,
the size rules of a restore."""

from __future__ import annotations

import pytest
from savepoint.api import Reason
from savepoint.flows import backup, restore
from savepoint.flows.formats import Repository, overlap
from savepoint.mover import files as mover_files
from savepoint.kube.references import CephFsTarget, NfsTarget
from savepoint.storage import files

pytestmark = pytest.mark.unit
GiB = 1 << 30


# ---- rsync command lines -------------------------------------------------------------------------


def test_backup_command_keeps_everything_and_links_to_the_parent() -> None:
    args = files.rsync_args("/src", "/repo/ns/uid/b/data", link_dest="/repo/ns/uid/a/data")
    assert args[0] == "rsync" and args[-2:] == ["/src/", "/repo/ns/uid/b/data/"]
    for option in ("-aHS", "--numeric-ids", "-A", "-X", "--open-noatime", "--delete", "--modify-window=-1",
                   "--link-dest=/repo/ns/uid/a/data", "--info=progress2", "--stats"):
        assert option in args, option


def test_what_the_destination_cannot_keep_is_left_out() -> None:
    args = files.rsync_args("/s/", "/d/", acls=False, xattrs=False, noatime=False, nanoseconds=False, delete=False)
    assert not {"-A", "-X", "--open-noatime", "--delete", "--modify-window=-1"} & set(args)
    assert files.Capabilities(acls=False, xattrs=True, owners=False).dropped == ["acls", "owners"]


def test_a_relative_link_dest_is_refused() -> None:
    with pytest.raises(ValueError):
        files.rsync_args("/s", "/d", link_dest="../a/data")


# ---- rsync output --------------------------------------------------------------------------------


def test_progress2_lines() -> None:
    p = files.parse_progress("    105,971,712  25%   50.52MB/s    0:00:02 (xfr#3, ir-chk=1000/4104)")
    assert p == files.ProgressLine(bytes=105971712, percent=25, transferred=3, to_check=1000, total_files=4104,
                                   scan_done=False)
    assert p.files_checked == 3104
    done = files.parse_progress("  406,129,770 100%   25.01MB/s    0:00:15 (xfr#100003, to-chk=0/100104)")
    assert done is not None and done.scan_done and done.files_checked == 100104
    assert files.parse_progress("              0   0%    0.00kB/s    0:00:00  ") == files.ProgressLine(0, 0)
    assert files.parse_progress("Number of files: 7") is None
    assert files.parse_progress("rsync: [sender] send_files failed to open \"x\": Permission denied (13)") is None


def test_stats() -> None:
    text = """
Number of files: 100,104 (reg: 100,003, dir: 101, link: 5, dev: 2, special: 1)
Number of created files: 7 (reg: 3, dir: 2, link: 1, special: 1)
Number of deleted files: 4
Number of regular files transferred: 2
Total file size: 10,485,767 bytes
Total transferred file size: 10,485,763 bytes
Literal data: 10,485,763 bytes
Matched data: 0 bytes
File list size: 0
"""
    s = files.parse_stats(text)
    assert (s.files, s.regular, s.directories, s.symlinks, s.devices, s.specials) == (100104, 100003, 101, 5, 2, 1)
    assert (s.created, s.deleted, s.transferred, s.total_size, s.transferred_size) == (7, 4, 2, 10485767, 10485763)
    assert s.non_directories == 100003


def test_item_lines_count_new_data_not_links() -> None:
    items = files.ItemStats()
    for line in ("SPITEM >f+++++++++ 4", "SPITEM cf...p..... 6", "SPITEM hf+++++++++ 6", "SPITEM cd+++++++++ 4,096",
                 "SPITEM cL+++++++++ 1", "SPITEM *deleting   0", "SPITEM >f.st...... 1,000"):
        assert items.add(line)
    assert not items.add("Number of files: 3")
    assert (items.received_files, items.received_bytes, items.local_copies, items.local_copy_bytes) == (2, 1004, 1, 6)
    assert (items.new_files, items.new_bytes, items.deleted) == (3, 1010, 1)


def test_progress_moves_for_a_no_change_incremental_too() -> None:
    estimate = files.ProgressEstimate(expected_bytes=1000, expected_files=100)
    # rsync: nothing transferred, 0 %, but half of the files checked
    done, total, count = estimate.update(files.ProgressLine(0, 0, 0, 50, 100, True))
    assert (done, total, count) == (500, 1000, 50)
    # a full copy: bytes decide
    full = files.ProgressEstimate()
    assert full.update(files.ProgressLine(250, 25, 3, 900, 1000, False))[:2] == (250, 1000)
    assert files.ProgressEstimate().update(files.ProgressLine(0, 0)) == (0, 0, 0)


# ---- quotas ------------------------------------------------------------------------------------------


def sbak(name: str, size: str | None, phase: str = "Available", **status: str) -> dict:
    return {"metadata": {"name": name, "uid": f"uid-{name}"}, "status": {"phase": phase, "size": size, **status}}


def test_gigabytes_limit_reads_plain_gib_and_quantities() -> None:
    assert backup.gigabytes_limit(None) is None and backup.gigabytes_limit(" ") is None
    assert backup.gigabytes_limit("10") == 10 * GiB
    assert backup.gigabytes_limit("1.5") == int(1.5 * GiB)
    assert backup.gigabytes_limit("500Gi") == 500 * GiB
    assert backup.gigabytes_limit("1T") == 10**12
    with pytest.raises(ValueError):
        backup.gigabytes_limit("lots")


def test_usage_counts_every_backup_but_failed_ones_and_itself() -> None:
    backups = [sbak("a", "1Gi"), sbak("b", "2Gi", "Deleting"), sbak("c", "4Gi", "Failed"), sbak("d", None, "Pending"),
               sbak("me", "8Gi", "Pending")]
    assert backup.usage_bytes(backups, "uid-me") == 3 * GiB


def test_quota_refusal_gives_usage_and_limit() -> None:
    assert backup.quota_refusal(None, 100 * GiB, 100 * GiB) is None
    assert backup.quota_refusal(10 * GiB, 6 * GiB, 4 * GiB) is None
    message = backup.quota_refusal(10 * GiB, 7 * GiB, 4 * GiB)
    assert message is not None
    assert "needs 4 GiB" in message and "use 7 GiB of its 10 GiB" in message and backup.NS_GIGABYTES in message


# ---- the parent of an incremental ----------------------------------------------------------------


def test_parent_is_the_newest_available_backup_of_the_same_source_repository_and_format() -> None:
    repo_ref = {"nfs": {"server": "s", "path": "/r"}}
    repo_key = Repository(repo_ref).key()
    other_ref = {"persistentVolumeClaim": {"name": "x"}}

    def candidate(name: str, when: str, **kw: object) -> dict:
        status = {"phase": "Available", "sourceUID": "src", "format": "Tree", "repositoryPath": f"ns/src/{name}",
                  "completionTime": when, "repository": repo_ref, **kw}
        # An annotation is a user's to write: it never decides which repository a backup is in.
        return {"metadata": {"name": name, "annotations": {"savepoint.dev/repository": Repository(other_ref).key()}},
                "status": status}

    items = [candidate("old", "2024-01-01T00:00:00Z"), candidate("new", "2024-01-03T00:00:00Z"),
             candidate("other-source", "2024-01-05T00:00:00Z", sourceUID="x"),
             candidate("failed", "2024-01-06T00:00:00Z", phase="Failed"),
             candidate("chunks", "2024-01-06T00:00:00Z", format="Chunks"),
             candidate("restoring", "2024-01-02T00:00:00Z", phase="Restoring"),
             candidate("me", "2024-01-09T00:00:00Z")]
    items.append(candidate("elsewhere", "2024-01-08T00:00:00Z", repository=other_ref))
    chosen = backup.choose_parent(items, source_uid="src", repository_key=repo_key, api_format="Tree", exclude="me")
    assert chosen is not None and chosen["metadata"]["name"] == "new"
    assert backup.choose_parent([], source_uid="src", repository_key=repo_key, api_format="Tree", exclude="me") is None


# ---- restore size rules (the seed's 400) ---------------------------------------------------------


def test_in_place_needs_the_same_size_other_claims_at_least_as_much() -> None:
    assert restore.size_refusal(GiB, GiB, in_place=True, target="pvc/x") is None
    reason, message = restore.size_refusal(GiB, 2 * GiB, in_place=True, target="pvc/x")  # type: ignore[misc]
    assert reason == Reason.SIZE_MISMATCH and "pvc/x" in message
    assert restore.size_refusal(GiB, 2 * GiB, in_place=False, target="pvc/y") is None
    reason, _ = restore.size_refusal(2 * GiB, GiB, in_place=False, target="pvc/y")  # type: ignore[misc]
    assert reason == Reason.TARGET_TOO_SMALL
    assert restore.size_refusal(None, GiB, in_place=True, target="nfs:x") is None


def test_a_repository_is_never_backed_up_into_itself_or_restored_over() -> None:
    assert overlap(NfsTarget("s", "/exports/repo"), NfsTarget("s", "/exports/repo/ns"))
    assert overlap(NfsTarget("s", "/exports"), NfsTarget("s", "/exports/repo"))
    assert not overlap(NfsTarget("s", "/exports/repo"), NfsTarget("s", "/exports/repo2"))
    assert not overlap(NfsTarget("s", "/exports/repo"), NfsTarget("t", "/exports/repo"))
    assert overlap(CephFsTarget("c", "fs", "/volumes/a"), CephFsTarget("c", "fs", "/volumes/a/b"))
    assert not overlap(CephFsTarget("c", "fs", "/volumes/a"), NfsTarget("s", "/volumes/a"))


# ---- the listing fits a termination message ----------------------------------------------------------


def test_listing_entries_pack_and_unpack() -> None:
    entries = [{"name": f"b{i}", "path": f"ns/uid/b{i}", "digest": "sha256:" + "ab" * 32} for i in range(30)]
    packed = mover_files.pack(entries)
    assert mover_files.unpack(packed) == entries and len(packed) < 3000

"""File-tree backup primitives: rsync that keeps everything, its progress and statistics, verification.

No Kubernetes in here: the movers (``savepoint.mover.files``) and the
benchmark (``bench/bench_files.py``) call these on plain directories.

rsync does the copying -- a well-kept tool beats hand-written tree walking --
with the options that keep every kind of metadata a share can carry::

    -a             recursion, symlinks as symlinks, permissions, times, owner, group, devices, specials
    -H             hard links inside the tree stay hard links
    -A -X          POSIX ACLs (access and default) and extended attributes (all namespaces root can read)
    -S             runs of zeros become holes: sparse files stay sparse
    --numeric-ids  owners as numbers: the repository may be read where the names mean other users
    --open-noatime reading the share does not change its access times (rsync >= 3.2.3)
    --delete       the destination ends exactly like the source (a retried backup into a half-written
                   directory, and a restore with deleteExtraFiles)
    --link-dest    incremental: unchanged files become hard links to the previous backup's copies
    --modify-window=-1  times compared to the nanosecond (rsync's default compares whole seconds: a file
                   rewritten in the same second with the same size would pass for unchanged)

Progress comes from ``--info=progress2`` (one line for the whole transfer,
``\\r``-separated) and the result from ``--stats``; both are parsed here,
under ``LC_ALL=C`` so numbers have no locale surprises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import os
import re
import stat
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

RSYNC = os.environ.get("SAVEPOINT_RSYNC", "rsync")
BASE_OPTIONS = ("-aHS", "--numeric-ids")
ACL_OPTION = "-A"
XATTR_OPTION = "-X"
NOATIME_OPTION = "--open-noatime"
NANOSECONDS_OPTION = "--modify-window=-1"  # compare times to the nanosecond (default: whole seconds)
ITEM_PREFIX = "SPITEM "
REPORT_OPTIONS = ("--info=progress2", "--stats", f"--out-format={ITEM_PREFIX}%i %l")
VANISHED_EXIT = 24  # "some files vanished before they could be transferred": normal for a live share
HASH_BUF = 1 << 20
PROGRESS_EVERY = 0.5  # seconds between progress lines parsed (the mover reports every 2 s at most)

ProgressFn = Callable[[int, int, int], None]  # (bytes done, bytes total, files done)


class RsyncFailed(Exception):
    """rsync exited with an error; ``code`` is its exit status, ``detail`` the last lines of its stderr."""

    def __init__(self, code: int, detail: str, what: str) -> None:
        self.code = code
        self.detail = detail
        self.no_space = "No space left on device" in detail or "Disk quota exceeded" in detail
        super().__init__(f"{what}: rsync exited with {code} ({EXIT_CODES.get(code, 'error')}): {detail}")


EXIT_CODES = {
    1: "syntax or usage error", 2: "protocol incompatibility", 3: "errors selecting input/output files, dirs",
    5: "error starting client-server protocol", 10: "error in socket I/O", 11: "error in file I/O",
    12: "error in rsync protocol data stream", 20: "received SIGUSR1 or SIGINT", 22: "error allocating memory",
    23: "partial transfer due to error", 24: "partial transfer due to vanished source files",
    30: "timeout in data send/receive", 35: "timeout waiting for daemon connection",
}


# ---- what this rsync can do --------------------------------------------------------------------


@functools.cache
def rsync_version() -> str:
    """``3.2.7`` (the first line of ``rsync --version``)."""
    out = subprocess.run([RSYNC, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"version\s+v?([0-9][0-9.]*\S*)", out)
    return match.group(1) if match else "unknown"


@functools.cache
def rsync_supports(option: str) -> bool:
    """Does this rsync know ``option`` (e.g. ``--open-noatime``, added in 3.2.3)?"""
    out = subprocess.run([RSYNC, "--help"], capture_output=True, text=True, check=False).stdout
    return re.search(rf"(^|\s){re.escape(option)}(\W|$)", out, re.MULTILINE) is not None


# A POSIX ACL as the kernel stores it in system.posix_acl_access: version 2, then (tag, perm, id) entries.
_ACL_XATTR = "system.posix_acl_access"
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def _probe_acl() -> bytes:
    entries = [(_ACL_USER_OBJ, 6, _ACL_UNDEFINED_ID), (_ACL_USER, 4, 0), (_ACL_GROUP_OBJ, 4, _ACL_UNDEFINED_ID),
               (_ACL_MASK, 4, _ACL_UNDEFINED_ID), (_ACL_OTHER, 4, _ACL_UNDEFINED_ID)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a destination filesystem can keep; the rest is dropped (and reported), not failed on."""

    acls: bool
    xattrs: bool
    owners: bool  # the mover is root (rsync can chown only then)
    nanoseconds: bool = True  # the filesystem keeps nanosecond times: compare times exactly

    @property
    def dropped(self) -> list[str]:
        return [name for name, ok in (("acls", self.acls), ("xattrs", self.xattrs), ("owners", self.owners)) if not ok]


def probe(directory: Path) -> Capabilities:
    """Try an xattr and a POSIX ACL on a scratch file in ``directory`` (which must be writable)."""
    path = directory / f".savepoint-probe-{os.getpid()}-{threading.get_ident()}"
    path.write_bytes(b"")
    try:
        def works(name: str, value: bytes) -> bool:
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL):
                    return False
                raise
            return True

        xattrs = works("user.savepoint-probe", b"1")
        acls = works(_ACL_XATTR, _probe_acl())
        wanted = 981173106_123456789
        os.utime(path, ns=(wanted, wanted))
        nanoseconds = os.stat(path).st_mtime_ns == wanted
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return Capabilities(acls=acls, xattrs=xattrs, owners=os.geteuid() == 0, nanoseconds=nanoseconds)


# ---- building the command (pure) ---------------------------------------------------------------


def rsync_args(source: Path | str, dest: Path | str, *, link_dest: Path | str | None = None, delete: bool = True,
               acls: bool = True, xattrs: bool = True, noatime: bool = True, nanoseconds: bool = True,
               report: bool = True, extra: Iterable[str] = (), rsync: str = RSYNC) -> list[str]:
    """The rsync command copying the *contents* of ``source`` into ``dest`` (both get a trailing ``/``).

    ``link_dest`` must be absolute (rsync resolves a relative one against
    ``dest``); the caller checks it exists (a missing one only makes a full copy).
    ``nanoseconds``: compare modification times exactly, so a file rewritten
    in the same second with the same size is not taken for unchanged (rsync
    compares whole seconds by default); only where the destination keeps them.
    """
    if link_dest is not None and not os.path.isabs(link_dest):
        raise ValueError(f"--link-dest must be absolute, got {link_dest}")
    args = [rsync, *BASE_OPTIONS]
    if acls:
        args.append(ACL_OPTION)
    if xattrs:
        args.append(XATTR_OPTION)
    if noatime:
        args.append(NOATIME_OPTION)
    if nanoseconds:
        args.append(NANOSECONDS_OPTION)
    if delete:
        args.append("--delete")
    if link_dest is not None:
        args.append(f"--link-dest={link_dest}")
    if report:
        args.extend(REPORT_OPTIONS)
    args.extend(extra)
    args.extend([_slash(source), _slash(dest)])
    return args


def _slash(path: Path | str) -> str:
    text = os.fspath(path)
    return text if text.endswith("/") else text + "/"


# ---- parsing its output (pure) -----------------------------------------------------------------

_PROGRESS = re.compile(
    r"^\s*(?P<bytes>[\d,]+)\s+(?P<percent>\d+)%\s+\S+\s+\S+"
    r"(?:\s+\(xfr#(?P<xfr>\d+),\s+(?P<kind>ir|to)-chk=(?P<left>\d+)/(?P<total>\d+)\))?\s*$")


@dataclasses.dataclass(frozen=True)
class ProgressLine:
    """One ``--info=progress2`` report: whole-transfer bytes and percent, files transferred and left."""

    bytes: int
    percent: int
    transferred: int | None = None  # xfr#
    to_check: int | None = None  # files still to check
    total_files: int | None = None  # files known so far (final once ``scan_done``)
    scan_done: bool = False  # "to-chk" (the file list is complete) rather than "ir-chk"

    @property
    def files_checked(self) -> int | None:
        if self.total_files is None or self.to_check is None:
            return None
        return self.total_files - self.to_check


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def parse_progress(line: str) -> ProgressLine | None:
    """A progress2 line, or None for anything else (stats, warnings)."""
    match = _PROGRESS.match(line)
    if not match:
        return None
    g = match.groupdict()
    return ProgressLine(bytes=_int(g["bytes"]), percent=int(g["percent"]),
                        transferred=int(g["xfr"]) if g["xfr"] else None,
                        to_check=int(g["left"]) if g["left"] else None,
                        total_files=int(g["total"]) if g["total"] else None,
                        scan_done=g["kind"] == "to")


@dataclasses.dataclass(frozen=True)
class RsyncStats:
    """rsync's ``--stats``: what it saw and what it did."""

    files: int = 0  # every entry, directories (and the top one) included
    regular: int = 0
    directories: int = 0
    symlinks: int = 0
    devices: int = 0
    specials: int = 0
    created: int = 0
    deleted: int = 0
    transferred: int = 0  # regular files whose data was written (not linked to --link-dest, not up to date)
    total_size: int = 0  # bytes of every file in the source (regular files and symlink targets)
    transferred_size: int = 0  # bytes of the files transferred: the new data an incremental stored
    literal: int = 0
    matched: int = 0

    @property
    def non_directories(self) -> int:
        return self.files - self.directories

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


_STAT_LINES = {
    "Number of files": "files",
    "Number of created files": "created",
    "Number of deleted files": "deleted",
    "Number of regular files transferred": "transferred",
    "Total file size": "total_size",
    "Total transferred file size": "transferred_size",
    "Literal data": "literal",
    "Matched data": "matched",
}
_KINDS = {"reg": "regular", "dir": "directories", "link": "symlinks", "dev": "devices", "special": "specials"}


def parse_stats(text: str) -> RsyncStats:
    """``--stats`` output (any surrounding lines are ignored)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        field = _STAT_LINES.get(key.strip())
        if not sep or field is None:
            continue
        number = re.match(r"\s*([\d,]+)", rest)
        if not number:
            continue
        values[field] = _int(number.group(1))
        if field == "files":
            for kind, count in re.findall(r"(reg|dir|link|dev|special):\s*([\d,]+)", rest):
                values[_KINDS[kind]] = _int(count)
    return RsyncStats(**values)


@dataclasses.dataclass
class ItemStats:
    """From rsync's per-item lines (``%i %l``): what was written as new data, as opposed to linked.

    ``>f`` is a file whose data came from the source, ``cf`` a local copy (a
    file that differs from the ``--link-dest`` one only in its attributes gets
    a copy of its own); ``hf`` (a hard link inside the tree) and files linked
    to the parent backup store nothing new.
    """

    received_files: int = 0
    received_bytes: int = 0
    local_copies: int = 0
    local_copy_bytes: int = 0
    deleted: int = 0

    @property
    def new_files(self) -> int:
        return self.received_files + self.local_copies

    @property
    def new_bytes(self) -> int:
        return self.received_bytes + self.local_copy_bytes

    def add(self, line: str) -> bool:
        """Count one output line; False when it is not an item line."""
        if not line.startswith(ITEM_PREFIX):
            return False
        flags, _, length = line[len(ITEM_PREFIX):].partition(" ")
        if flags.startswith("*deleting"):
            self.deleted += 1
            return True
        if len(flags) < 2 or flags[1] != "f":
            return True
        try:
            size = int(length.strip().replace(",", "") or 0)
        except ValueError:
            size = 0
        if flags[0] in "<>":
            self.received_files += 1
            self.received_bytes += size
        elif flags[0] == "c":
            self.local_copies += 1
            self.local_copy_bytes += size
        return True


class ProgressEstimate:
    """Turns progress2 lines into (done, total, files) that move steadily for full and incremental copies.

    rsync's own percent counts transferred bytes only, so a no-change
    incremental sits at 0 % until the end.  The estimate takes the larger of
    the byte fraction and the files-checked fraction, against the expected
    size and file count (the previous backup's, when known).
    """

    def __init__(self, expected_bytes: int = 0, expected_files: int = 0) -> None:
        self.expected_bytes = max(0, expected_bytes)
        self.expected_files = max(0, expected_files)
        self.files = 0

    def update(self, p: ProgressLine) -> tuple[int, int, int]:
        total = self.expected_bytes
        if p.percent > 0:
            total = max(total, p.bytes * 100 // p.percent)
        total = max(total, p.bytes)
        byte_fraction = p.bytes / total if total else 0.0
        checked = p.files_checked
        file_fraction = 0.0
        if checked is not None:
            self.files = checked
            files_total = max(self.expected_files, p.total_files or 0) if not p.scan_done else (p.total_files or 0)
            file_fraction = checked / files_total if files_total else 0.0
        fraction = min(1.0, max(byte_fraction, file_fraction))
        if total == 0:
            return 0, 0, self.files
        return int(total * fraction), total, self.files


# ---- running it --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RsyncResult:
    stats: RsyncStats
    code: int  # 0, or VANISHED_EXIT
    seconds: float
    warnings: tuple[str, ...] = ()  # last stderr lines of a run that still counted as success
    items: ItemStats = dataclasses.field(default_factory=ItemStats)

    @property
    def vanished(self) -> bool:
        return self.code == VANISHED_EXIT


def _records(stream: Iterable[bytes]) -> Iterator[str]:
    """Split a byte stream on ``\\r`` and ``\\n`` (progress2 rewrites its line with ``\\r``)."""
    pending = b""
    for chunk in stream:
        pending += chunk
        parts = re.split(rb"[\r\n]", pending)
        pending = parts.pop()
        for part in parts:
            if part:
                yield part.decode(errors="replace")
    if pending:
        yield pending.decode(errors="replace")


def run_rsync(args: list[str], *, on_progress: ProgressFn | None = None, estimate: ProgressEstimate | None = None,
              what: str = "rsync", allow_vanished: bool = True) -> RsyncResult:
    """Run rsync, reporting progress as it goes; ``RsyncFailed`` unless it succeeded.

    Exit 24 (files vanished while copying a live share) counts as success
    when ``allow_vanished``: those files were deleted by the application.
    """
    estimate = estimate or ProgressEstimate()
    env = {**os.environ, "LC_ALL": "C"}
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    errors: deque[str] = deque(maxlen=20)

    def drain_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            errors.append(line.decode(errors="replace").rstrip())

    reader = threading.Thread(target=drain_stderr, daemon=True)
    reader.start()
    tail: list[str] = []
    items = ItemStats()
    # progress2 rewrites its line after every file: parse one now and then, not 100,000 of them.
    next_report = 0.0
    try:
        for record in _records(iter(lambda: proc.stdout.read1(65536), b"")):  # type: ignore[union-attr,attr-defined]
            if items.add(record):
                continue
            if "%" in record and record[:1] == " ":
                if on_progress is not None and time.monotonic() >= next_report:
                    p = parse_progress(record)
                    if p is not None:
                        on_progress(*estimate.update(p))
                        next_report = time.monotonic() + PROGRESS_EVERY
                continue
            tail.append(record)
    finally:
        code = proc.wait()
        reader.join(timeout=10)
    stats = parse_stats("\n".join(tail))
    ok = code == 0 or (allow_vanished and code == VANISHED_EXIT)
    if not ok:
        raise RsyncFailed(code, " | ".join(list(errors)[-5:]) or "no error output", what)
    return RsyncResult(stats=stats, code=code, seconds=time.monotonic() - started,
                       warnings=tuple(list(errors)[-5:]) if code else (), items=items)


def copy_tree(source: Path, dest: Path, *, link_dest: Path | None = None, delete: bool = True,
              caps: Capabilities | None = None, on_progress: ProgressFn | None = None,
              expected_bytes: int = 0, expected_files: int = 0, what: str = "copy") -> RsyncResult:
    """rsync ``source``'s contents into ``dest`` (created if missing), keeping all the metadata ``caps`` allow."""
    caps = caps or Capabilities(acls=True, xattrs=True, owners=True)
    dest.mkdir(parents=True, exist_ok=True)
    if link_dest is not None and not link_dest.is_dir():
        link_dest = None
    args = rsync_args(source, dest, link_dest=link_dest, delete=delete, acls=caps.acls, xattrs=caps.xattrs,
                      noatime=rsync_supports(NOATIME_OPTION), nanoseconds=caps.nanoseconds)
    return run_rsync(args, on_progress=on_progress, estimate=ProgressEstimate(expected_bytes, expected_files),
                     what=what)


# ---- walking trees -----------------------------------------------------------------------------


def count_entries(root: Path) -> int:
    """Every entry below ``root``, plus ``root`` itself: what rsync's "Number of files" counts.

    Uses directory entries' types only (no stat per file), so it is cheap
    enough to run before every restore.
    """
    count = 1
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


@dataclasses.dataclass(frozen=True)
class Entry:
    """One path of a tree, relative, with what verification compares."""

    path: str
    kind: str  # file, dir, symlink, other
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int  # seconds
    ctime: float
    ino: int
    dev: int
    target: str | None = None  # symlinks


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def walk(root: Path) -> Iterator[Entry]:
    """Every entry below ``root`` in sorted path order (``a/b`` before ``a.b``'s siblings: by path parts)."""
    def visit(rel: str, directory: str) -> Iterator[Entry]:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            path = f"{rel}{entry.name}"
            kind = _kind(st.st_mode)
            yield Entry(path, kind, st.st_size, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime),
                        st.st_ctime, st.st_ino, st.st_dev,
                        os.readlink(entry.path) if kind == "symlink" else None)
            if kind == "dir":
                yield from visit(f"{path}/", entry.path)

    yield from visit("", os.fspath(root))


def file_sha256(path: str | Path, noatime: bool = False, nofollow: bool = False) -> str:
    base = os.O_RDONLY | (os.O_NOFOLLOW | os.O_NONBLOCK if nofollow else 0)
    flags = base | (getattr(os, "O_NOATIME", 0) if noatime else 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:  # O_NOATIME needs ownership (or CAP_FOWNER): fall back
        fd = os.open(path, base)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb", buffering=0) as f:
        while chunk := f.read(HASH_BUF):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_line(path: str, size: int, sha256: str) -> str:
    """One line of ``checksums.jsonl``: the same as the ``checksum-tree`` mover's manifest lines."""
    return json.dumps({"path": path, "sha256": sha256, "size": size}, sort_keys=True)


# ---- verification ------------------------------------------------------------------------------


@dataclasses.dataclass
class VerifyReport:
    """Source and copy compared file by file."""

    files: int = 0  # regular files hashed on both sides
    bytes: int = 0
    mismatches: list[str] = dataclasses.field(default_factory=list)  # "path: what differs"
    changed_during: int = 0  # source files that changed after the copy started: not comparable
    checksums_digest: str | None = None  # sha256:<hex> of the written checksums file
    changed_examples: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def message(self, limit: int = 10) -> str:
        named = "; ".join(self.mismatches[:limit])
        more = f" (and {len(self.mismatches) - limit} more)" if len(self.mismatches) > limit else ""
        return f"{len(self.mismatches)} of {self.files} files differ between the share and the backup: {named}{more}"


def _merge(left: Iterator[Entry], right: Iterator[Entry]) -> Iterator[tuple[Entry | None, Entry | None]]:
    """Pair two sorted walks by path (walk order is a tree order; compare by path parts)."""
    def key(e: Entry) -> tuple[str, ...]:
        return tuple(e.path.split("/"))

    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and key(a) < key(b)):
            yield a, None
            a = next(left, None)
        elif a is None or key(b) < key(a):
            yield None, b
            b = next(right, None)
        else:
            yield a, b
            a, b = next(left, None), next(right, None)


def verify_copy(source: Path, copy: Path, *, since: float, checksums_out: Path | None = None,
                caps: Capabilities | None = None, on_progress: ProgressFn | None = None,
                expected_bytes: int = 0, workers: int = 4) -> VerifyReport:
    """Re-read ``source`` and ``copy``; compare type, size, sha256, symlink targets and metadata.

    A source entry whose ctime is at or after ``since`` (the copy's start)
    changed while the backup ran: it is counted, not compared.  With
    ``checksums_out`` the copy's checksum manifest is written there
    (atomically) and its digest returned in the report.
    """
    caps = caps or Capabilities(acls=True, xattrs=True, owners=True)
    report = VerifyReport()
    pairs: list[tuple[Entry | None, Entry | None]] = []
    for s, c in _merge(walk(source), walk(copy)):
        changed = s is not None and s.ctime >= since
        if s is None or c is None:
            assert (s or c) is not None
            path = (s or c).path  # type: ignore[union-attr]
            if changed or s is None:  # new in the share, or deleted from it, after the copy started
                report.changed_during += 1
                if len(report.changed_examples) < 5:
                    report.changed_examples.append(path)
            else:
                report.mismatches.append(f"{path}: missing from the backup")
            continue
        if changed:
            report.changed_during += 1
            if len(report.changed_examples) < 5:
                report.changed_examples.append(s.path)
            if c.kind == "file":
                pairs.append((None, c))  # still listed in the checksum manifest (the copy's content)
            continue
        problems = []
        if s.kind != c.kind:
            problems.append(f"is a {c.kind} in the backup, a {s.kind} in the share")
        elif s.kind == "symlink" and s.target != c.target:
            problems.append(f"symlink target {c.target!r} instead of {s.target!r}")
        elif s.kind == "file" and s.size != c.size:
            problems.append(f"{c.size} bytes instead of {s.size}")
        if s.kind == c.kind:
            if s.mode != c.mode:
                problems.append(f"mode {c.mode:o} instead of {s.mode:o}")
            if caps.owners and (s.uid, s.gid) != (c.uid, c.gid):
                problems.append(f"owner {c.uid}:{c.gid} instead of {s.uid}:{s.gid}")
            if s.kind == "file" and s.mtime != c.mtime:
                problems.append("modification time differs")
        if problems:
            report.mismatches.append(f"{s.path}: {', '.join(problems)}")
            continue
        if s.kind == "file":
            pairs.append((s, c))

    total = expected_bytes or sum(c.size for _s, c in pairs if c is not None)
    done = 0
    lines: list[str] = []

    def hashes(pair: tuple[Entry | None, Entry | None]) -> tuple[str | None, str]:
        s, c = pair
        assert c is not None
        copied = file_sha256(copy / c.path)
        original = file_sha256(source / s.path, noatime=True) if s is not None else None
        return original, copied

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="verify") as pool:
        for (s, c), (original, copied) in zip(pairs, pool.map(hashes, pairs)):
            assert c is not None
            lines.append(checksum_line(c.path, c.size, copied))
            if s is not None:
                report.files += 1
                report.bytes += c.size
                if original != copied:
                    report.mismatches.append(f"{c.path}: content differs (sha256 {copied[:12]}… in the backup, "
                                             f"{original[:12] if original else '?'}… in the share)")
            done += c.size
            if on_progress is not None:
                on_progress(done, total, report.files)
    if checksums_out is not None:
        data = ("\n".join(lines) + ("\n" if lines else "")).encode()
        from savepoint.storage.repository import write_atomic

        write_atomic(checksums_out, data)
        report.checksums_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return report


MAX_CHECKSUM_LINE = 8 * 1024  # one line of checksums.jsonl: a path of at most 4 KiB, a size, a digest
MAX_CHECKSUM_PATH = 4096
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _open_regular(path: Path, limit: int | None, where: str) -> int:
    """An fd of a regular file (no symlink, no FIFO) of at most ``limit`` bytes; ``BadBackupManifest`` else."""
    from savepoint.storage.repository import BadBackupManifest

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadBackupManifest(where, "(file)", "is missing") from None
    except OSError as exc:
        raise BadBackupManifest(where, "(file)", "is a symlink" if exc.errno == errno.ELOOP
                                else f"cannot be read: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (limit is not None and st.st_size > limit):
        os.close(fd)
        raise BadBackupManifest(where, "(file)", "is not a regular file" if not stat.S_ISREG(st.st_mode) else
                                f"is {st.st_size} bytes, more than the limit of {limit} (maxManifestBytes)")
    return fd


def parse_checksum_line(line: bytes, number: int, where: str) -> dict[str, Any]:
    """One line of ``checksums.jsonl``, validated: ``{path, size, sha256}`` with a relative path inside the
    tree (no ``..``, no absolute path, no NUL), a non-negative integer size and a sha256 hex digest."""
    from savepoint.storage.repository import MAX_INT, BadBackupManifest

    field = f"line {number}"
    if len(line) > MAX_CHECKSUM_LINE:
        raise BadBackupManifest(where, field, f"is longer than {MAX_CHECKSUM_LINE} bytes")
    try:
        item = json.loads(line.decode("utf-8"), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadBackupManifest(where, field, f"is not JSON: {str(exc)[:100]}") from None
    if not isinstance(item, dict) or set(item) != {"path", "size", "sha256"}:
        raise BadBackupManifest(where, field, "must be {path, size, sha256}")
    path, size, digest = item["path"], item["size"], item["sha256"]
    if type(path) is not str or not path or len(path.encode("utf-8", "surrogateescape")) > MAX_CHECKSUM_PATH \
            or "\0" in path or path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")):
        raise BadBackupManifest(where, f"{field}.path", f"{str(path)[:100]!r} is not a relative path inside the tree")
    if type(size) is not int or not 0 <= size <= MAX_INT:
        raise BadBackupManifest(where, f"{field}.size", f"{str(size)[:40]} is not a file size")
    if type(digest) is not str or not _HEX64.match(digest):
        raise BadBackupManifest(where, f"{field}.sha256", f"{str(digest)[:80]!r} is not a sha256 digest")
    return item


def _checksum_lines(checksums: Path, limit: int | None, where: str,
                    digest: Any = None) -> Iterator[tuple[int, dict[str, Any]]]:
    fd = _open_regular(checksums, limit, where)
    with os.fdopen(fd, "rb") as f:
        number = 0
        while True:
            line = f.readline(MAX_CHECKSUM_LINE + 1)
            if not line:
                return
            if digest is not None:
                digest.update(line)
            number += 1
            if line.strip():
                yield number, parse_checksum_line(line.rstrip(b"\n"), number, where)


def verify_against_checksums(tree: Path, checksums: Path, *, on_progress: ProgressFn | None = None,
                             workers: int = 4, expected: Any = None, where: str | None = None,
                             limit: int | None = None) -> VerifyReport:
    """Re-hash a stored tree against its ``checksums.jsonl`` (bit rot, tampering, lost files).

    The file is validated before any file is hashed: bounded (``limit``), every line well-formed
    (``parse_checksum_line``), as many lines as ``expected.files`` (the manifest's ``checksums``), and
    its sha256 the ``expected.digest`` the manifest recorded (otherwise it was changed since the backup:
    a mismatch). Then it is streamed, a few files at a time; no file outside ``tree`` is opened (paths
    under a symlink of the tree are mismatches, and no symlink is followed).
    """
    where = where or str(checksums)
    from savepoint.storage.repository import BadBackupManifest

    report = VerifyReport()
    # pass 1: validate every line, count, total and digest, keeping nothing
    digest = hashlib.sha256()
    count = total = 0
    for _number, item in _checksum_lines(checksums, limit, where, digest):
        count += 1
        total += int(item["size"])
    if expected is not None:
        if count != expected.files:
            raise BadBackupManifest(where, "(file)", f"has {count} lines, but backup.json recorded "
                                    f"{expected.files} checksummed files")
        if "sha256:" + digest.hexdigest() != expected.digest:
            report.mismatches.append(f"{checksums.name}: does not match the digest backup.json recorded "
                                     "(it changed since the backup was made)")
            return report
    real_tree = os.path.realpath(tree)
    done = 0

    def check(item: dict[str, Any]) -> str | None:
        rel = str(item["path"])
        path = tree / rel
        parent = os.path.dirname(rel)
        if parent and os.path.realpath(path.parent) != os.path.join(real_tree, parent):
            return f"{rel}: lies under a symlink, not in the tree"
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return f"{rel}: missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{rel}: not a regular file any more"
        if st.st_size != item["size"]:
            return f"{rel}: {st.st_size} bytes instead of {item['size']}"
        try:
            got = file_sha256(path, nofollow=True)
        except OSError as exc:
            return f"{rel}: cannot be read ({exc.strerror or exc})"
        if got != item["sha256"]:
            return f"{rel}: content does not match its sha256 (corrupted)"
        return None

    window: deque[tuple[dict[str, Any], Any]] = deque()

    def settle(item: dict[str, Any], problem: str | None) -> None:
        nonlocal done
        report.files += 1
        report.bytes += int(item["size"])
        done += int(item["size"])
        if problem:
            report.mismatches.append(problem)
        if on_progress is not None:
            on_progress(done, total, report.files)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="verify") as pool:
        for _number, item in _checksum_lines(checksums, limit, where):
            window.append((item, pool.submit(check, item)))
            if len(window) > workers * 4:
                first, future = window.popleft()
                settle(first, future.result())
        while window:
            first, future = window.popleft()
            settle(first, future.result())
    return report


# ---- what an incremental really stored ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LinkStats:
    """Regular files of a backup tree, split into hard links to the parent backup and new data."""

    files: int  # regular file names
    inodes: int  # distinct inodes among them
    linked: int  # inodes shared with the parent backup (no new data)
    new_inodes: int  # inodes this backup wrote
    new_bytes: int  # their logical size
    new_blocks_bytes: int  # what they occupy on disk (holes not counted)


def link_stats(tree: Path, parent: Path | None = None) -> LinkStats:
    """Count what ``tree`` shares with ``parent`` by inode identity (a walk of both; for tests and reports)."""
    parent_inodes: set[tuple[int, int]] = set()
    if parent is not None and parent.is_dir():
        parent_inodes = {(e.dev, e.ino) for e in walk(parent) if e.kind == "file"}
    seen: set[tuple[int, int]] = set()
    files = linked = new = new_bytes = new_blocks = 0
    for dirpath, _dirs, names in os.walk(tree):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISREG(st.st_mode):
                continue
            files += 1
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            if key in parent_inodes:
                linked += 1
            else:
                new += 1
                new_bytes += st.st_size
                new_blocks += st.st_blocks * 512
    return LinkStats(files=files, inodes=len(seen), linked=linked, new_inodes=new, new_bytes=new_bytes,
                     new_blocks_bytes=new_blocks)

"""File trees with every kind of metadata a share can carry, and a byte-for-byte, metadata-for-metadata
comparison -- for the storage and end-to-end tests of file-share backups.

Everything is made with the real tools (``setfacl``, ``os.setxattr``,
``os.mknod``) on a real filesystem; the tests run as root, as the movers do.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

MiB = 1 << 20
WHEN = (981173106, 123456789)  # 2001-02-03 04:05:06.123456789 UTC, in (s, ns)


def _ns(seconds: int, nanos: int) -> int:
    return seconds * 1_000_000_000 + nanos


def make_tree(root: Path, *, seed: bytes = b"savepoint") -> None:
    """Fill ``root`` with: owners and modes, times, hard links, symlinks (also dangling), a sparse file,
    a large file, POSIX ACLs (access and default), xattrs (user and trusted), a FIFO, a device node,
    odd names, an empty directory."""
    root.mkdir(parents=True, exist_ok=True)
    docs = root / "docs"
    docs.mkdir()
    a = docs / "a.txt"
    a.write_bytes(b"alpha " * 1000 + seed)
    os.chown(a, 1234, 4321)
    os.chmod(a, 0o640)
    subprocess.run(["setfattr", "-n", "user.color", "-v", "blue", str(a)], check=True)
    os.setxattr(a, "user.empty", b"")
    os.link(a, docs / "a-hardlink.txt")
    os.link(a, root / "a-hardlink-at-top.txt")
    (root / "link-to-a").symlink_to("docs/a.txt")
    (root / "dangling").symlink_to("does/not/exist")
    os.lchown(root / "link-to-a", 1500, 1500)
    sparse = root / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(10 * MiB)
        f.write(b"data in the middle of a hole" + seed)
    big = root / "big.bin"
    big.write_bytes(hashlib.sha256(seed).digest() * (2 * MiB // 32))
    secret = root / "private"
    secret.mkdir(mode=0o700)
    os.chown(secret, 2000, 2000)
    (secret / "key").write_bytes(b"only for uid 2000\n")
    os.chown(secret / "key", 2000, 2000)
    os.chmod(secret / "key", 0o600)
    suid = root / "tool"
    suid.write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(suid, 0o4755)
    subprocess.run(["setfacl", "-m", "u:1001:rwx,g:1002:r-x", str(docs)], check=True)
    subprocess.run(["setfacl", "-d", "-m", "g:1002:r-x", str(docs)], check=True)
    subprocess.run(["setfacl", "-m", "u:1003:r--", str(big)], check=True)
    os.setxattr(docs, "trusted.savepoint-test", b"\x00\x01binary")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null-device", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "empty-dir").mkdir()
    (root / "name with spaces ünïcødé.txt").write_text("odd names survive\n")
    deep = root / "deep" / "deeper" / "deepest"
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("leaf\n")
    for path in (a, big, sparse, deep / "leaf.txt"):
        os.utime(path, ns=(_ns(*WHEN), _ns(*WHEN)))
    os.utime(root / "link-to-a", ns=(_ns(*WHEN), _ns(WHEN[0] + 7, 0)), follow_symlinks=False)
    # rsync compares the times of new symlinks and special files at one-second granularity: entries made in
    # the second the copy runs could keep the copy's own time; a share's files are older than that.
    for path in (root / "dangling", root / "fifo", root / "null-device", root / "tool", secret / "key"):
        os.utime(path, ns=(_ns(*WHEN), _ns(WHEN[0] + 3, 5)), follow_symlinks=False)
    for d in (deep, deep.parent, docs):
        os.utime(d, ns=(_ns(*WHEN), _ns(WHEN[0] + 60, 0)))


def change_tree(root: Path) -> None:
    """Change, add and delete files (what happens to a share between a backup and a restore)."""
    (root / "docs" / "a.txt").write_bytes(b"rewritten")
    (root / "big.bin").unlink()
    shutil.rmtree(root / "deep")
    (root / "new-file.txt").write_text("not in the backup\n")
    (root / "new-dir").mkdir()
    (root / "new-dir" / "x").write_text("x")
    os.chmod(root / "tool", 0o755)
    os.chown(root / "private", 0, 0)
    subprocess.run(["setfacl", "-b", str(root / "docs")], check=True)
    os.removexattr(root / "docs" / "a-hardlink.txt", "user.color")  # same inode as a.txt: both lose it
    (root / "dangling").unlink()
    (root / "dangling").symlink_to("somewhere/else")


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path) -> dict[str, Any]:
    """Everything comparable about a tree: per path type, mode, owner, size, mtime (ns), content, symlink
    target, device number, xattrs (ACLs are the system.posix_acl_* xattrs), and the hard-link groups."""
    entries: dict[str, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}

    def record(full: str, rel: str) -> None:
        st = os.lstat(full)
        info: dict[str, Any] = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "xattrs": _xattrs(full)}
        if not stat.S_ISDIR(st.st_mode):
            info["mtime_ns"] = st.st_mtime_ns
        if stat.S_ISREG(st.st_mode):
            info["size"] = st.st_size
            info["sha256"] = _sha(full)
            if st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        elif stat.S_ISLNK(st.st_mode):
            info["target"] = os.readlink(full)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info["rdev"] = st.st_rdev
        entries[rel] = info

    record(str(root), ".")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            record(full, os.path.relpath(full, root))
    groups = sorted(sorted(paths) for paths in inodes.values() if len(paths) > 1)
    return {"entries": entries, "hardlinks": groups}


def diff(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Human-readable differences between two snapshots (empty: identical)."""
    problems = []
    for path in sorted(set(expected["entries"]) | set(actual["entries"])):
        e, a = expected["entries"].get(path), actual["entries"].get(path)
        if e is None:
            problems.append(f"{path}: extra")
        elif a is None:
            problems.append(f"{path}: missing")
        elif e != a:
            keys = sorted(k for k in set(e) | set(a) if e.get(k) != a.get(k))
            problems.append(f"{path}: {', '.join(f'{k} {e.get(k)!r} != {a.get(k)!r}' for k in keys)}")
    if expected["hardlinks"] != actual["hardlinks"]:
        problems.append(f"hard links {expected['hardlinks']} != {actual['hardlinks']}")
    return problems


def allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def getfacl(path: Path) -> str:
    return subprocess.run(["getfacl", "-p", "-n", str(path)], check=True, capture_output=True, text=True).stdout \
        .split("\n", 1)[1]  # without the "# file:" line, which names the path


def empty(directory: Path) -> None:
    """Remove everything inside ``directory`` (not the directory itself)."""
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()

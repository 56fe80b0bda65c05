"""``checksum-tree``: a checksum manifest of a directory tree.

The smallest real mover: it proves the framework end to end (volumes,
progress, result) and is what ``verify`` builds on.  The manifest lists every
regular file with its size and sha256, sorted by path, one JSON object per
line; its own sha256 is the tree's digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from savepoint.mover.registry import ActionContext, ActionFailed, action

BUF = 1 << 20


def walk_files(root: Path) -> Iterator[Path]:
    """Regular files below ``root`` in a stable order, not following symlinks."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(BUF):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_lines(root: Path, ctx: ActionContext | None = None) -> Iterator[str]:
    files = list(walk_files(root))
    total = sum(p.lstat().st_size for p in files)
    done = 0
    for count, path in enumerate(files, 1):
        size = path.lstat().st_size
        yield json.dumps({"path": str(path.relative_to(root)), "size": size, "sha256": file_sha256(path)},
                         sort_keys=True)
        done += size
        if ctx is not None:
            ctx.progress(done, total, files=count)


@action("checksum-tree")
def checksum_tree(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    root = Path(params["path"])
    if not root.is_dir():
        raise ActionFailed("SourceUnreachable", f"{root} is not a readable directory in the mover")
    digest = hashlib.sha256()
    files = 0
    size = 0
    out = Path(params["output"]) if params.get("output") else None
    tmp = out.with_name(out.name + ".partial") if out else None
    sink = open(tmp, "w") if tmp else None
    try:
        for line in manifest_lines(root, ctx):
            digest.update(line.encode() + b"\n")
            files += 1
            size += json.loads(line)["size"]
            if sink:
                sink.write(line + "\n")
    finally:
        if sink:
            sink.close()
    if tmp and out:
        os.replace(tmp, out)  # the manifest appears whole or not at all
    return {"files": files, "bytes": size, "digest": digest.hexdigest()}

"""Start one pod container: the pod runner's stand-in for a container runtime.

Run as ``python -I -S podrunner_exec.py SPEC.json`` by the pod runner daemon
(stdlib only, so it starts fast and sees nothing of the daemon's environment).
It enters a private mount and UTS namespace, builds a root for the container
out of bind mounts of this machine's root (so mount points that do not exist
on the host are created in a tmpfs, never on the host), binds each volume onto
its mountPath, chroots, drops to the pod's user and execs the command.

The image is not used: the command must exist on this machine.  Failures
before exec are written to ``start-error`` next to the spec and exit 128.
"""

from __future__ import annotations

import ctypes
import json
import os
import posixpath
import signal
import stat
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def _bind(source: str, target: str, read_only: bool = False) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    if read_only:  # a bind mount only becomes read-only by remounting it
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


class Root:
    """A container root at ``path``: a tmpfs holding binds of the host's root.

    Container paths map 1:1 to host paths until a directory is *shadowed*
    (replaced by a tmpfs with binds of its children) so that a missing mount
    point can be created without touching the host.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.owned = {"/"}  # container dirs that live in our tmpfs
        self.volumes: list[str] = []  # container paths where volumes are mounted
        _mount("tmpfs", path, "tmpfs", 0, "mode=755")
        self._populate("/")

    def host(self, cpath: str) -> str:
        return posixpath.join(self.path, cpath.lstrip("/"))

    def _populate(self, cdir: str) -> None:
        """Fill our tmpfs dir ``cdir`` with binds of the host dir of the same name."""
        with os.scandir(cdir) as entries:
            for entry in entries:
                src = posixpath.join(cdir, entry.name)
                dst = self.host(src)
                if entry.is_symlink():
                    os.symlink(os.readlink(src), dst)
                elif entry.is_dir():
                    os.mkdir(dst)
                    _bind(src, dst)
                else:  # files, device nodes, sockets: bind onto an empty file
                    open(dst, "w").close()
                    _bind(src, dst)

    def _in_volume(self, cdir: str) -> bool:
        return any(cdir == v or cdir.startswith(v.rstrip("/") + "/") for v in self.volumes)

    def _shadow(self, cdir: str) -> None:
        mode = stat.S_IMODE(os.stat(cdir).st_mode)
        _mount("tmpfs", self.host(cdir), "tmpfs", 0, f"mode={mode:o}")
        self._populate(cdir)
        self.owned.add(cdir)

    def _make(self, cdir: str, name: str, is_dir: bool) -> None:
        # Inside a volume the mount point is created in the volume (as runc
        # does); elsewhere never on the host: shadow the host dir first.
        if cdir not in self.owned and not self._in_volume(cdir):
            self._shadow(cdir)
        target = self.host(posixpath.join(cdir, name))
        if is_dir:
            os.mkdir(target, 0o755)
        else:
            open(target, "w").close()
        if cdir in self.owned:
            self.owned.add(posixpath.join(cdir, name))

    def ensure(self, cpath: str, is_dir: bool) -> str:
        """Resolve ``cpath`` inside the container, creating what is missing; return the host-side path."""
        todo = [p for p in cpath.split("/") if p]
        done = "/"
        hops = 0
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            if name == "..":
                done = posixpath.dirname(done)
                continue
            here = posixpath.join(done, name)
            real = self.host(here)
            if os.path.islink(real):
                hops += 1
                if hops > 40:
                    raise OSError(f"too many symlinks resolving {cpath}")
                target = os.readlink(real)
                todo = [p for p in target.split("/") if p] + todo
                done = "/" if target.startswith("/") else done
                continue
            if not os.path.lexists(real):
                self._make(done, name, is_dir or bool(todo))
            done = here
        return self.host(done)

    def mount_volume(self, source: str, target: str, read_only: bool) -> None:
        is_dir = os.path.isdir(source)
        dst = self.ensure(target, is_dir)
        if os.path.isdir(dst) != is_dir:
            kind = "directory" if is_dir else "file"
            raise OSError(f"cannot mount {kind} {source} on {target}: not a {kind} in the container")
        _bind(source, dst, read_only)
        self.volumes.append(posixpath.normpath(target))


def _set_user(user: dict[str, Any]) -> None:
    uid, gid = user.get("uid"), user.get("gid")
    groups = sorted(set(user.get("groups") or []))
    if uid is None and gid is None and not groups:
        return
    os.setgroups(groups)
    if gid is not None:
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


def _write(dir_fd: int, name: str, text: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def launch(spec: dict[str, Any], dir_fd: int) -> None:
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    name = spec["hostname"].encode()
    _check(_libc.sethostname(name, len(name)), "sethostname")
    # The daemon finds every process of this container by its mount namespace.
    _write(dir_fd, "mntns", os.readlink("/proc/self/ns/mnt"))

    root = Root(spec["rootfs"])
    for m in sorted(spec["mounts"], key=lambda m: posixpath.normpath(m["target"]).count("/")):
        root.mount_volume(m["source"], m["target"], m.get("readOnly", False))
    # The project's own code stands in for the image: keep it visible even when a
    # volume is mounted over one of its parents (an emptyDir at /tmp with the
    # checkout under /tmp), read-only as it would be in an image.
    for keep in spec.get("keep", []):
        if any(keep.startswith(posixpath.normpath(m["target"]).rstrip("/") + "/") for m in spec["mounts"]):
            _bind(keep, root.ensure(keep, True), read_only=True)
    cwd = spec.get("cwd") or "/"
    root.ensure(cwd, True)
    os.chroot(root.path)
    try:  # the rootfs itself shows up again inside its own /work bind: hide it
        _check(_libc.umount2(spec["rootfs"].encode(), MNT_DETACH), "umount")
    except OSError:
        pass
    os.chdir(cwd)
    os.umask(0o022)
    _set_user(spec.get("user") or {})
    # Python ignores these at start-up and ignored signals survive exec: give the command the defaults.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except FileNotFoundError:
        raise OSError(f"exec {argv[0]!r}: executable file not found in $PATH or working directory "
                      "(the sandbox runs this machine's commands, not the image's)") from None
    except PermissionError as e:
        raise OSError(f"exec {argv[0]!r}: {e.strerror}") from None


def main() -> None:
    spec_path = sys.argv[1]
    dir_fd = os.open(os.path.dirname(spec_path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        launch(spec, dir_fd)
    except Exception as e:  # noqa: BLE001 - any failure before exec is a start error
        message = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        _write(dir_fd, "start-error", message)
        print(f"podrunner: container start failed: {message}", file=sys.stderr, flush=True)
        os._exit(128)


if __name__ == "__main__":
    main()

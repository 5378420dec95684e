"""The index folder on disk: one writer at a time, a crash-safe swap, recovery of what a killed
build left behind, and checksums of every file.

Locks are ``flock`` locks, released by the kernel when their holder dies, so a ``kill -9`` never
leaves a folder locked:

- the *writer lock* ``.<name>.lock`` beside the folder (it holds the writer's PID) is held for a
  whole build or ``--add``, from reading the old index to swapping in the new one;
- the *swap lock* is the parent folder itself: a swap holds it exclusively, a reader holds it shared
  while it opens the files, so a reader never sees the folder half-swapped.

A swap exchanges the new folder and the old one in one atomic ``renameat2(RENAME_EXCHANGE)``; where
the filesystem cannot, it renames the old folder to ``.<name>.old-<pid>`` and the new one into
place, and the next reader or writer restores the old one if the process died in between.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import IndexBusy, IndexFormat

__all__ = ["writer_lock", "read_lock", "make_temp_dir", "swap_into_place", "restore_interrupted_swap",
           "remove_leftovers", "file_checksums", "verify_files", "FULL_CHECK_BYTES"]

log = logging.getLogger("rag")

# files up to this size are hashed in full on every load; larger ones by size and head/tail sample
# (`rag index --verify` hashes everything)
FULL_CHECK_BYTES = 16 * 1024 * 1024
_SAMPLE_BYTES = 1024 * 1024
# test hooks: kill this process with SIGKILL at a named step of a write; disable the atomic exchange
_KILL_AT = "RAG_FAULT_KILL_AT"
_NO_EXCHANGE = "RAG_FAULT_NO_EXCHANGE"


def _fault_point(step: str) -> None:
    if os.environ.get(_KILL_AT) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _lock_path(index_dir: Path) -> Path:
    return index_dir.parent / f".{index_dir.name}.lock"


def _holder(lock_file: Path) -> str:
    try:
        return lock_file.read_text(encoding="ascii").strip() or "?"
    except (OSError, UnicodeDecodeError):
        return "?"


@contextmanager
def writer_lock(index_dir: str | Path, *, wait: bool = True) -> Iterator[None]:
    """Hold the exclusive writer lock of an index folder; on entry, restore or remove what a killed
    writer left behind.

    Args:
        wait: wait for another writer to finish (saying so in the log); else raise IndexBusy.
    """
    import fcntl

    index_dir = Path(index_dir)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_file = _lock_path(index_dir)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(lock_file)
            if not wait:
                raise IndexBusy(f"index at {index_dir} is being written by PID {pid}; try again when it has "
                                f"finished") from None
            log.warning("index at %s is being written by PID %s; waiting for it to finish", index_dir, pid)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        with _swap_lock(index_dir, exclusive=True):
            restore_interrupted_swap(index_dir)
        remove_leftovers(index_dir)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def _swap_lock(index_dir: Path, *, exclusive: bool) -> Iterator[None]:
    import fcntl

    try:
        fd = os.open(index_dir.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # no parent folder (then no index either) or not readable: nothing to guard
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextmanager
def read_lock(index_dir: str | Path) -> Iterator[None]:
    """Hold the shared swap lock while reading an index folder, so no swap happens mid-read; restore
    the old folder first if a writer was killed between the two renames of a swap."""
    index_dir = Path(index_dir)
    with _swap_lock(index_dir, exclusive=False):
        restore_interrupted_swap(index_dir)
        yield


def _leftovers(index_dir: Path, kind: str) -> list[Path]:
    prefix = f".{index_dir.name}.{kind}-"
    try:
        return sorted((p for p in index_dir.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []


def restore_interrupted_swap(index_dir: str | Path) -> bool:
    """If the index folder is missing but an ``.<name>.old-<pid>`` folder is there (its writer was
    killed between the two renames of a swap), rename it back. Call with the swap lock held."""
    index_dir = Path(index_dir)
    if (index_dir / "manifest.json").exists():
        return False
    for old in _leftovers(index_dir, "old"):
        if not (old / "manifest.json").is_file():
            continue
        try:
            if index_dir.is_dir() and not (index_dir / "manifest.json").exists():
                index_dir.rmdir()  # an empty folder (or one with only a README) blocks the rename
        except OSError:
            pass
        try:
            old.rename(index_dir)
        except OSError:  # another reader restored it first
            return (index_dir / "manifest.json").exists()
        log.warning("restored the index at %s from %s, left by a build that was killed while swapping it in",
                    index_dir, old.name)
        return True
    return False


def remove_leftovers(index_dir: str | Path) -> None:
    """Remove the temporary and old folders of builds that died. Call with the writer lock held (then
    no other build is running, so every one of them is a leftover)."""
    index_dir = Path(index_dir)
    stale = _leftovers(index_dir, "tmp")
    if (index_dir / "manifest.json").exists():
        stale += _leftovers(index_dir, "old")
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
        log.info("removed %s, left by a build of %s that did not finish", p.name, index_dir)


def make_temp_dir(index_dir: Path) -> Path:
    """A new temporary sibling folder to build an index in, named after this process."""
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.tmp-{os.getpid()}-", dir=index_dir.parent))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where the system cannot."""
    if os.environ.get(_NO_EXCHANGE):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def swap_into_place(tmp: Path, index_dir: Path) -> None:
    """Put the finished folder ``tmp`` at ``index_dir``; at every instant either the old or the new
    index is there or recoverable (see the module note)."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    os.chmod(tmp, 0o755)
    _fault_point("before-swap")
    with _swap_lock(index_dir, exclusive=True):
        if index_dir.exists():
            if _exchange(tmp, index_dir):
                _fault_point("after-exchange")
                _fsync_dir(index_dir.parent)
                shutil.rmtree(tmp, ignore_errors=True)  # now the old index
                return
            old = index_dir.with_name(f".{index_dir.name}.old-{os.getpid()}")
            index_dir.rename(old)
            _fault_point("after-old-moved")
            try:
                tmp.rename(index_dir)
            except BaseException:
                old.rename(index_dir)
                raise
            _fault_point("after-new-moved")
            _fsync_dir(index_dir.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(index_dir)
            _fsync_dir(index_dir.parent)


def _sha256(path: Path, *, sample: bool = False) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        if sample:
            h.update(f.read(_SAMPLE_BYTES))
            f.seek(max(0, path.stat().st_size - _SAMPLE_BYTES))
            h.update(f.read(_SAMPLE_BYTES))
        else:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def file_checksums(folder: Path, *, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """Size and sha256 of every file under ``folder`` (by relative POSIX path), except ``skip``; large
    files also get the hash of their first and last MiB, for the fast check on load."""
    out = {}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if not f.is_file() or rel in skip:
            continue
        entry = {"size": f.stat().st_size, "sha256": _sha256(f)}
        if entry["size"] > FULL_CHECK_BYTES:
            entry["sample_sha256"] = _sha256(f, sample=True)
        out[rel] = entry
    return out


def verify_files(folder: Path, files: dict[str, dict], *, full: bool = False) -> int:
    """Check every file the manifest lists: present, same size, same hash (files above
    ``FULL_CHECK_BYTES`` by their head/tail sample unless ``full``). Returns the files checked.

    Raises:
        IndexFormat: a file is missing, truncated, grown or changed.
    """
    def damaged(why: str) -> IndexFormat:
        return IndexFormat(f"index at {folder} is damaged ({why}); rebuild it with `rag index`")

    for rel, want in files.items():
        f = folder / rel
        try:
            size = f.stat().st_size
        except OSError:
            raise damaged(f"{rel} is missing") from None
        if size != want.get("size"):
            raise damaged(f"{rel} is {size:,} bytes, the manifest says {want.get('size')}")
        try:
            if full or "sample_sha256" not in want:
                ok = _sha256(f) == want.get("sha256")
            else:
                ok = _sha256(f, sample=True) == want["sample_sha256"]
        except OSError as exc:
            raise damaged(f"{rel} cannot be read: {exc.strerror}") from None
        if not ok:
            raise damaged(f"{rel} does not match its checksum in the manifest")
    return len(files)

"""The one way quantkit writes a file: a temporary file in the destination's directory, written, flushed and
fsynced, checked by the caller, renamed over the destination, and the directory fsynced. Readers see the old file or
the new one, never a part; any failure, an interrupt included, removes the temporary file.

    with atomic_file(path, verify=check) as f:   # f: a binary file object; check(tmp_path) may raise
        f.write(...)
    atomic_write(path, data)                      # bytes, read back and compared before the rename

Every writer (GGUF, safetensors, the work folder's checkpoints, reports) goes through here. The temporaries being
written are listed in `PENDING`, so that an interrupt that cannot wait for a writer to unwind (quantkit.interrupt)
removes them before the process ends (`discard_pending`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from quantkit.errors import BadInput, IOFailure

PENDING: set[Path] = set()  # temporary files and directories being written now


def discard_pending() -> None:
    """Remove every temporary being written (the writers' own cleanup, for a process that ends without unwinding)."""
    for p in list(PENDING):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        PENDING.discard(p)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(d: Path) -> None:
    """Make a rename inside `d` durable (best effort: some file systems refuse a directory fsync)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path) -> tuple[int, Path]:
    """A new temporary file beside `path`: (open descriptor, its path)."""
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    except OSError as e:
        raise IOFailure(f"{path}: cannot create a temporary file in {path.parent} ({e.strerror})") from e
    PENDING.add(Path(name))
    return fd, Path(name)


@contextmanager
def atomic_file(path: Path, verify: Callable[[Path], None] | None = None) -> Iterator[BinaryIO]:
    """Write `path` through a temporary file (see the module doc). `verify(tmp)` runs after the fsync and before the
    rename."""
    path = Path(path)
    fd, tmp = temp_path(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a build is an ordinary file
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise IOFailure(f"{path}: writing failed ({e.strerror or e})") from e
        raise
    finally:
        PENDING.discard(tmp)
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> Path:
    """`data` to `path` atomically, read back and compared before the rename."""

    def same(tmp: Path) -> None:
        if tmp.read_bytes() != data:
            raise IOFailure(f"{tmp}: bytes read back differ from those written")

    with atomic_file(path, verify=same) as f:
        f.write(data)
    return Path(path)


# ---------------------------------------------------------------- whole directories (safetensors builds)


def replaceable_dir(out_dir: Path) -> None:
    """An existing destination is replaced only if it is a build (config.json and safetensors) or empty."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise BadInput(f"{out_dir}: exists and is not a directory; refusing to replace it with a build")
    entries = list(out_dir.iterdir())
    if entries and not ((out_dir / "config.json").is_file() and any(p.suffix == ".safetensors" for p in entries)):
        raise BadInput(f"{out_dir}: exists and is not a safetensors build; refusing to replace it")


@contextmanager
def temp_dir(out_dir: Path) -> Iterator[Path]:
    """A new temporary directory beside `out_dir` (a directory build being written), removed if the block fails;
    the block installs it (install_dir)."""
    try:
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".partial"))
    except OSError as e:
        raise IOFailure(f"{out_dir}: cannot create a temporary directory in {out_dir.parent} ({e.strerror})") from e
    PENDING.add(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        PENDING.discard(tmp)


def install_dir(tmp: Path, out_dir: Path) -> None:
    """Rename the finished directory into place; a previous build is moved aside first and removed after."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
    os.rename(out_dir, old / "build")
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old / "build", out_dir)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)

"""glibc malloc settings for a process that allocates and frees large arrays all the time (mallopt(3)).

- `one_arena()`, for the whole command: it runs in a worker thread (quantkit.interrupt), and that thread's own arena
  did not hand the evaluation's freed 267 MB logits back: the README's main command ended at 8.4 GB peak RSS
  instead of 4.1 GB. M_ARENA_MAX 1 makes every thread allocate where the main thread does.
- `reuse_large_blocks()`, around the build: its forwards, Hessians and encoders make temporaries of 10-300 MB,
  which glibc serves above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps on free, so the next
  one page-faults again. The main command ran with 86 s of system time in its 4 minutes (32 s with the setting below).
  With M_MMAP_THRESHOLD 256 MiB and M_TRIM_THRESHOLD 1 GiB those blocks come from the heap and are reused. The
  evaluation runs with the usual 32 MiB again: its 267 MB logits, held on the heap, fragmented it (peak RSS 9 GB).
"""

from __future__ import annotations

import contextlib
import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's malloc.h
LARGE = {M_MMAP_THRESHOLD: 256 << 20, M_TRIM_THRESHOLD: 1 << 30}
USUAL = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}  # where glibc's dynamic thresholds end up


def _libc():
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        libc.malloc_trim  # noqa: B018 - both or neither
    except (OSError, AttributeError):  # not glibc: nothing is changed
        return None
    return libc


_LIBC = _libc()


def _set(settings: dict[int, int]) -> None:
    if _LIBC is not None:
        for opt, value in settings.items():
            _LIBC.mallopt(opt, value)


def trim() -> None:
    """Hand the heap's free pages back to the kernel (malloc_trim(3)), e.g. after each evaluation chunk: one run of
    the README's command peaked at 8.9 GB, another at 4.4 GB, the difference being freed blocks kept on the heap."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def one_arena() -> None:
    _set({M_ARENA_MAX: 1})


@contextlib.contextmanager
def reuse_large_blocks():
    _set(LARGE)
    try:
        yield
    finally:
        _set(USUAL)

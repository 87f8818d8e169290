"""Ctrl-C and SIGTERM end a command within a second or two, whatever it is computing.

Python runs signal handlers in the main thread only, between two bytecodes: a command whose main thread is inside
one long native call (a BLAS product over 65,536 calibration tokens, a Numba kernel over a 262,144-row table) hears
Ctrl-C only when the call returns, which on a large model is tens of seconds. So the command runs in a worker thread
and the main thread only waits (native code releases the GIL: torch, NumPy's BLAS and the `nogil` Numba kernels).

On an interrupt the main thread raises KeyboardInterrupt inside the worker (delivered at its next bytecode), so the
command unwinds as it would in the main thread: writers remove their temporaries, `compress` keeps its work folder.
If the worker is still inside a native call after `GRACE` seconds (or a second interrupt comes), the main thread
removes the writers' temporaries itself (formats.atomic.discard_pending, which it also calls after the worker
unwound) and the process ends at once. Either way
the work folder's last checkpoint is whole: checkpoints are written atomically.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Callable, TypeVar

from quantkit.formats.atomic import discard_pending

GRACE = 2.0  # seconds the worker gets to unwind before the process ends without it
EXIT_CODE = 130  # 128 + SIGINT, as a shell reports Ctrl-C

T = TypeVar("T")


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends a run as Ctrl-C does


def _raise_in(thread: threading.Thread) -> None:
    _quiet_newborn_threads()
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))


def _quiet_newborn_threads() -> None:
    """PyThreadState_SetAsyncExc raises in every thread state with the given thread id, and a thread that the worker
    is starting carries the worker's id until it runs (CPython 3.11 pystate.c, init_threadstate): it dies of the
    KeyboardInterrupt before its first line (e.g. a row-range thread, kernels.registry.in_row_ranges) and Python
    reports that as "Exception ignored in thread started by ...". The run is being interrupted anyway: say nothing."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if unraisable.exc_type is not KeyboardInterrupt:
            previous(unraisable)

    sys.unraisablehook = hook


def run(fn: Callable[[], T], on_exit: Callable[[], None]) -> T:
    """fn() in a worker thread; its result, or its exception re-raised here. On Ctrl-C / SIGTERM: KeyboardInterrupt
    from fn if it unwinds within GRACE seconds; otherwise `on_exit()` (the caller's last words) and the process ends
    with EXIT_CODE."""
    signal.signal(signal.SIGTERM, _terminate)
    box: dict[str, object] = {}
    done = threading.Event()

    def work():
        try:
            try:
                box["result"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the main thread as it is
                box["error"] = e
            finally:
                done.set()
        except KeyboardInterrupt:  # the main thread's request arrived after fn had ended: the run ends as it did
            done.set()

    # The main thread polls with time.sleep, which a signal cuts short, and not Thread.join: in Python 3.11 a
    # KeyboardInterrupt inside join() marks the still-running thread as stopped (bpo-45274's release of its lock).
    worker = threading.Thread(target=work, name="quantkit", daemon=True)
    worker.start()
    try:
        while not done.is_set():
            time.sleep(0.05)
    except KeyboardInterrupt:
        _raise_in(worker)
        deadline = time.monotonic() + GRACE
        try:
            while not done.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
        except KeyboardInterrupt:  # a second Ctrl-C: do not wait
            pass
        # also after the worker unwound: an interrupt between a temporary's creation and its writer's `try` leaves it
        # to this (it failed test_faults' interrupt-during-write under load)
        discard_pending()
        if not done.is_set():
            on_exit()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_CODE)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")  # type: ignore[return-value]

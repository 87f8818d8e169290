"""Compile kernels in a second process while this one compiles others.

Numba compiles a kernel on its first call, in the calling thread and under a process-wide lock: a fresh install's
first `compress --bits 4 gemma3-270m` spent about 40 s compiling the 15 candidate types' codecs one after another
(sensitivity.relative_errors), on one of the two cores. The kernels are `cache=True`, so a second process that calls
them writes them to Numba's cache, and this process then loads instead of compiling whatever the other has finished
by the time it first needs it (Numba looks in the cache before it compiles; cache files are written by rename, so a
half-written file is never read).

    helper = warm.start(types_in_order_of_need)   # compiles from the end of the list
    ...                                           # this process compiles from the front
    warm.stop(helper)

    python -m quantkit.kernels.warm Q4_K IQ2_XXS ...   # what the helper runs
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def start(types: list[str]) -> subprocess.Popen | None:
    """A helper process compiling `types` in reverse order (this process takes them from the front)."""
    if len(types) < 2:
        return None
    return subprocess.Popen([sys.executable, "-m", "quantkit.kernels.warm", *reversed(types)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "NUMBA_NUM_THREADS": "1"})


def stop(helper: subprocess.Popen | None) -> None:
    """End the helper (whatever it has cached stays cached)."""
    if helper is not None and helper.poll() is None:
        helper.kill()
        helper.wait()


def compile_types(types: list[str]) -> None:
    """Encode and decode one small block row of each type (with importance: some types need it)."""
    from quantkit.kernels import registry

    x = np.random.default_rng(0).normal(size=(2, 256)).astype(np.float32)
    imp = np.ones(256, np.float32)
    for t in types:
        registry.dequantize(t, registry.quantize(t, x, imp), x.shape)


if __name__ == "__main__":
    compile_types(sys.argv[1:])

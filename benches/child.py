"""One `quantkit compress` run in a child process, measured on its own: the benches' wall time and peak RSS."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_compress(model: str, checkpoint: Path, out: Path, args: list[str]) -> tuple[Path, float, float]:
    """`quantkit compress MODEL --from CHECKPOINT --out OUT *args`; returns (the GGUF it wrote, wall seconds, peak RSS
    in GB of that child)."""
    cmd = [str(ROOT / ".venv/bin/quantkit"), "compress", model, "--from", str(checkpoint), "--out", str(out), *args]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd)
    # wait4 gives this one child's own rusage (ru_maxrss in KiB on Linux); RUSAGE_CHILDREN would give the maximum
    # over every child so far, which hides a flat or smaller later run
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"quantkit compress exited with {code}")
    (gguf,) = (p for p in out.glob("*.gguf") if not p.name.startswith("mmproj-"))  # the text build
    return gguf, seconds, usage.ru_maxrss * 1024 / 1e9

"""A child process measured on its own: the benches' wall time and peak RSS (`measured`), and one
`quantkit compress` run that way (`run_compress`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measured(cmd: list, log: Path | None = None) -> tuple[int, float, int]:
    """Run cmd (its stdout and stderr to `log` if given, else inherited); (exit code, wall seconds, peak RSS in
    bytes of that child). wait4 gives this one child's own rusage (ru_maxrss in KiB on Linux); RUSAGE_CHILDREN
    would give the maximum over every child so far, which hides a flat or smaller later run."""
    t0 = time.perf_counter()
    with open(log, "w") if log else contextlib.nullcontext() as f:
        child = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT if log else None)
        _, status, usage = os.wait4(child.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss * 1024


def run_compress(model: str, checkpoint: Path, out: Path, args: list[str]) -> tuple[Path, float, float]:
    """`quantkit compress MODEL --from CHECKPOINT --out OUT *args`; returns (the GGUF it wrote, wall seconds, peak RSS
    in GB of that child)."""
    cmd = [str(ROOT / ".venv/bin/quantkit"), "compress", model, "--from", str(checkpoint), "--out", str(out), *args]
    print("$", " ".join(cmd), flush=True)
    code, seconds, peak = measured(cmd)
    if code:
        raise SystemExit(f"quantkit compress exited with {code}")
    (gguf,) = (p for p in out.glob("*.gguf") if not p.name.startswith("mmproj-"))  # the text build
    return gguf, seconds, peak / 1e9

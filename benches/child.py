"""A child process measured on its own: the benches' wall time and peak RSS (`measured`), and one
`quantkit compress` run that way (`run_compress`)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# A small launcher that forks the command and reports its rusage. Linux keeps a process's peak RSS across execve,
# taking the old address space's high-water mark, so a command spawned directly from this (large) bench process
# would report at least the bench's own peak: e2b.py, which runs llama.cpp in-process before its runtime table,
# printed 1.917 GB for every file that way. Forked from the launcher, the command starts from the launcher's few MB.
LAUNCHER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(cmd: list, log: Path | None = None) -> tuple[int, float, int]:
    """Run cmd (its stdout and stderr to `log` if given, else inherited); (exit code, wall seconds, peak RSS in
    bytes of that command alone: its own wait4 rusage, ru_maxrss in KiB on Linux, taken by LAUNCHER)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, open(log, "w") if log else contextlib.nullcontext() as f:
        rss = Path(tmp) / "maxrss"
        code = subprocess.call([sys.executable, "-c", LAUNCHER, rss, *map(str, cmd)], stdout=f,
                               stderr=subprocess.STDOUT if log else None)
        peak = int(rss.read_text()) * 1024 if rss.exists() else 0
    return code, time.perf_counter() - t0, peak


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

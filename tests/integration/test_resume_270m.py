"""Repeatability and resume on the real Gemma 3 270M, through the installed `quantkit` command:

a run stopped with SIGINT once some blocks are checkpointed (within 5 seconds, exit 130, the work folder kept), then
continued with `--resume`, writes the same bytes as an uninterrupted run, and says which blocks it did not redo. Its
blocks come from two processes and the uninterrupted run's from a third, so this also shows that runs with the same
options write byte-identical GGUFs (the fast tier's tests/test_resume.py checks that directly on tiny models).

The options keep it short: llama.cpp's Q4_K_M types, 2048 calibration tokens, no evaluation. Each run prints its
file size and sha256.

Run: .venv/bin/pytest -m integration tests/integration/test_resume_270m.py -s
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

QUANTKIT = Path(sys.executable).with_name("quantkit")
ARGS = ["gemma3-270m", "--like", "Q4_K_M", "--calib-tokens", "2048", "--tokens", "0"]
N_LAYERS = 18
STOP = 6  # SIGINT once block STOP has begun: blocks 0..STOP-1 are checkpointed
TIMEOUT = 1800


def compress(out: Path, *extra: str) -> subprocess.CompletedProcess:
    r = subprocess.run([str(QUANTKIT), "compress", *ARGS, "--out", str(out), *extra], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return r


def gguf(out: Path) -> Path:
    (path,) = out.glob("*.gguf")
    return path


def describe(label: str, path: Path) -> str:
    line = f"{label}: {path.name} {path.stat().st_size:,} bytes, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}"
    print(line)
    return line


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("first")
    compress(out)
    return gguf(out)


def test_sigint_then_resume_gives_the_same_bytes(first, tmp_path):
    work = tmp_path / "work"
    started = work / f"layers.{STOP}.self_attn.q_proj.weight.npy"  # block STOP's first quantized tensor
    p = subprocess.Popen([str(QUANTKIT), "compress", *ARGS, "--out", str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + TIMEOUT
    while not started.exists():
        assert p.poll() is None, f"compress ended before block {STOP}: {p.communicate()}"
        assert time.monotonic() < deadline, f"block {STOP} never started"
        time.sleep(0.05)
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=300)
    took = time.monotonic() - t
    print(f"\nSIGINT in block {STOP}'s GPTQ: the run ended {took:.2f} s later")
    assert took < 5, f"the run ended {took:.1f} s after SIGINT"
    assert p.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == ["interrupted"]
    assert not list(tmp_path.glob("*.gguf"))
    stage = torch.load(work / "capture.pt", weights_only=True)["stage"]
    assert STOP - 1 <= stage < N_LAYERS - 1
    print(f"\ninterrupted in block {stage + 1}: {work} holds {sum(1 for _ in work.iterdir())} files, "
          f"{sum(f.stat().st_size for f in work.iterdir()):,} bytes, the checkpoint after block {stage}")

    r = compress(tmp_path, "--resume")
    resumed = f"resumed {work}: the interrupted run had done its plan, embedding and blocks 0-{stage} of {N_LAYERS}"
    assert resumed in r.stdout.splitlines(), r.stdout
    print(resumed)
    describe("uninterrupted", first)
    describe("interrupted + resumed", gguf(tmp_path))
    assert gguf(tmp_path).read_bytes() == first.read_bytes()
    assert not work.exists()

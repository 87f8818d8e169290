"""Ctrl-C and SIGTERM end `quantkit compress` within 5 seconds in every stage, even in the middle of a long native
call (quantkit.interrupt): exit status 130, one "interrupted" line, no temporary or partial file left, the work
folder kept for --resume.

Each case runs the real command in a child process on a tiny random Gemma 4, with one function of the stage replaced
by a 120-second `time.sleep` before it does its work: a call that holds no GIL and runs no bytecode, as a BLAS
product over a large calibration set or a Numba kernel over a large table does. Without the worker thread the signal
would wait those 120 seconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tiny_models
import tiny_tokenizer

LIMIT = 5.0  # seconds from the signal to the end of the process
STALL = 120  # seconds the replaced function sleeps

# stage -> (module, attribute, the compress flags that reach it)
STAGES = {
    "capture": ("quantkit.calibration.capture", "Capture._run_stage", ["--bits", "4"]),
    "sensitivity": ("quantkit.sensitivity", "relative_errors", ["--bits", "4"]),
    "gptq": ("quantkit.gptq", "_gptq_loop", ["--type", "Q4_K"]),
    "writing": ("quantkit.formats.gguf_model", "_quantize", ["--type", "Q4_K", "--method", "rtn"]),
}

# Runs `quantkit compress ARGS` with STAGE's function stalled; touches MARK when the stall begins.
DRIVER = r"""
import importlib, sys, time
module, attr, mark, stall = sys.argv[1:5]
owner = importlib.import_module(module)
*path, name = attr.split(".")
for p in path:
    owner = getattr(owner, p)
original = getattr(owner, name)

def stalled(*args, **kwargs):
    open(mark, "w").close()
    time.sleep(float(stall))
    return original(*args, **kwargs)

setattr(owner, name, stalled)
sys.argv = ["quantkit", "compress", *sys.argv[5:]]
from quantkit.cli import main
main()
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_e")
    model, _ = tiny_models.gemma4_e(0)
    model.save_pretrained(d)
    tiny_tokenizer.save(d)
    calib = tmp_path_factory.mktemp("calib") / "calib.txt"
    calib.write_text(tiny_tokenizer.TEXT * 30)
    return d, calib


def start(tiny, out: Path, stage: str) -> tuple[subprocess.Popen, Path]:
    d, calib = tiny
    module, attr, recipe = STAGES[stage]
    mark = out.parent / f"{out.name}.stalled"
    args = [str(d), *recipe, "--calib", str(calib), "--calib-tokens", "1024", "--tokens", "0", "--out", str(out),
            "--no-mmproj"]
    # SIGINT as a terminal gives it: a shell's background job (`pytest &`) starts with SIGINT ignored, which the
    # child would inherit, and Python then installs no handler for it
    p = subprocess.Popen([sys.executable, "-c", DRIVER, module, attr, str(mark), str(STALL), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not mark.exists():
        if p.poll() is not None:
            pytest.fail(f"compress ended before the {stage} stage: {p.communicate()}")
        assert time.monotonic() < deadline, f"the {stage} stage never began"
        time.sleep(0.02)
    time.sleep(0.3)  # well inside the stalled call
    return p, mark


CASES = [(stage, signal.SIGINT) for stage in STAGES] + [("gptq", signal.SIGTERM)]


@pytest.mark.parametrize("stage, sig", CASES, ids=[f"{stage}-{sig.name}" for stage, sig in CASES])
def test_a_signal_ends_the_run_within_seconds(tiny, tmp_path, stage, sig):
    out = tmp_path / "out"
    p, _ = start(tiny, out, stage)
    t = time.monotonic()
    p.send_signal(sig)
    try:
        _, stderr = p.communicate(timeout=60)
    finally:
        p.kill()
    took = time.monotonic() - t
    print(f"{stage}: {sig.name} -> exit {p.returncode} after {took:.2f} s")
    assert took < LIMIT, f"{stage}: the run ended {took:.1f} s after {sig.name}"
    assert p.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == ["interrupted"], stderr
    left = [f.relative_to(out) for f in out.rglob("*")] if out.exists() else []
    assert not [f for f in left if f.name.endswith(".partial") or f.suffix == ".gguf"], left
    if stage in ("gptq", "writing"):  # the work folder an interrupted build keeps for --resume
        assert (out / "work" / "run.json").is_file(), left


def test_an_interrupted_gptq_run_resumes(tiny, tmp_path):
    out = tmp_path / "out"
    p, _ = start(tiny, out, "gptq")
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == 130
    d, calib = tiny
    r = subprocess.run([sys.executable, "-m", "quantkit", "compress", str(d), "--type", "Q4_K", "--calib", str(calib),
                        "--calib-tokens", "1024", "--tokens", "0", "--out", str(out), "--no-mmproj",
                        "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert any(line.startswith(f"resumed {out / 'work'}") for line in r.stdout.splitlines()), r.stdout
    assert len(list(out.glob("*.gguf"))) == 1 and not (out / "work").exists()


# A worker that starts threads without pause, as kernels.registry.in_row_ranges does for every tensor.
NEWBORNS = r"""
import sys, threading, time
from quantkit import interrupt
def fn():
    print("ready", flush=True)
    while True:
        t = threading.Thread(target=time.sleep, args=(0,))
        t.start()
        t.join()
try:
    interrupt.run(fn, on_exit=lambda: None)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_threads_being_started_die_quietly():
    """The interrupt reaches a thread the worker is starting too (it carries the worker's thread id until it runs);
    that thread's death must not print "Exception ignored in thread started by ...". Without the guard this script
    printed it in 9 of 20 runs; 8 clean runs in a row leave a chance below 1 % that an unguarded build passes."""
    for _ in range(8):
        p = subprocess.Popen([sys.executable, "-c", NEWBORNS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        _, stderr = p.communicate(timeout=30)
        assert p.returncode == 130 and stderr == "", stderr

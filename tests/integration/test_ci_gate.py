"""The CI perplexity-chart gate on the real 270M, judged by llama.cpp.

(a) is the gate itself: `quantkit gate` rebuilds the four builds with the settings
recorded in reports/baselines/gemma3-270m/baseline.json and must pass against the
committed baselines. (b) shows the gate can fail: the `--bits 4` build made with
llama.cpp's data-free rounding (`--method rtn`, same budget, same evaluation) in place
of GPTQ, gated together with (a)'s other three builds, fails on exactly that build."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from quantkit.reports import gate

pytestmark = pytest.mark.integration


def quantkit(*args) -> subprocess.CompletedProcess:
    """The command as CI runs it; progress bars go to the test's stderr."""
    return subprocess.run([sys.executable, "-m", "quantkit", *map(str, args)], stdout=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate")
    return quantkit("gate", "--out", out), out


def test_rebuilt_builds_pass_the_gate(gate_run):
    proc, out = gate_run
    print("\n" + proc.stdout)
    settings = gate.Settings.load(gate.BASELINE_DIR)
    verdict = json.loads((out / "gate.json").read_text())
    assert {c["build"] for c in verdict["checks"]} == {f"bits{b}" for b in settings.bits}
    assert proc.returncode == 0, proc.stdout
    assert verdict["passed"] and "gate passed" in proc.stdout
    assert (out / "accuracy_vs_size.png").exists() and (out / "gate.md").exists()


def test_degraded_build_fails_the_gate(gate_run, tmp_path):
    _, out = gate_run
    rtn = replace(gate.Settings.load(gate.BASELINE_DIR), method="rtn")
    build = quantkit(*rtn.compress_args(4, tmp_path / "bits4"))
    assert build.returncode == 0, build.stdout
    proc = quantkit("gate", "--out", tmp_path / "gate", out / "bits2", out / "bits3", tmp_path / "bits4", out / "bits8")
    print("\n" + proc.stdout)
    assert proc.returncode == 1, proc.stdout
    failing = [line for line in proc.stdout.splitlines() if line.startswith("FAIL ")]
    assert failing and all(line.startswith("FAIL bits4: ") for line in failing)
    assert any(line.startswith("FAIL bits4: mean_kld regressed") for line in failing)
    assert any(line.startswith("FAIL bits4: ppl regressed") for line in failing)
    assert "gate FAILED" in proc.stdout

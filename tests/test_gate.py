"""The CI gate's comparison, files and command on synthetic run reports."""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from quantkit.cli import cli
from quantkit.errors import BadFile, BadOption
from quantkit.reports import gate
from quantkit.reports.results import BuildResult, RunReport

BITS = (2, 3, 4, 8)


def _run(bits: int, scale: float = 1.0, **change) -> RunReport:
    """A one-build run report; larger `bits`, smaller file errors."""
    b = BuildResult(f"quantkit --bits {bits} gptq", "quantkit", 100_000_000 + 30_000_000 * bits, bits + 0.5,
                    ppl=14.0 + 8.0 / bits * scale, mean_kld=0.4 / bits**2 * scale, p99_kld=3.0 / bits**2 * scale,
                    top1=100 - 20 / bits, path=f"/tmp/x/bits{bits}.gguf")
    return RunReport("gemma-3-270m-q4_k_m.gguf", "wiki", 4080, "llama.cpp", [replace(b, **change)])


def _runs(**per_bits) -> dict[str, RunReport]:
    return {f"bits{b}": per_bits.get(f"bits{b}", _run(b)) for b in BITS}


def _base(bits: int):
    return _run(bits).builds[0]


def test_equal_passes():
    v = gate.compare(_runs(), _runs())
    assert v.passed and not v.failures()
    assert len(v.checks) == len(BITS) * len(gate.GATED)
    assert {c.ratio for c in v.checks} == {1.0}


def test_three_percent_ppl_regression_fails():
    worse = _runs(bits4=_run(4, ppl=_base(4).ppl * 1.03))
    v = gate.compare(_runs(), worse)
    assert not v.passed
    assert [(c.build, c.metric) for c in v.checks if not c.passed] == [("bits4", "ppl")]
    (msg,) = v.failures()
    assert msg.startswith("bits4: ppl regressed") and "+3.00 %" in msg and "tolerance 2.0 %" in msg


def test_regression_within_tolerance_passes():
    v = gate.compare(_runs(), _runs(bits2=_run(2, ppl=_base(2).ppl * 1.015, mean_kld=_base(2).mean_kld * 1.019)))
    assert v.passed


def test_kld_regression_fails():
    worse = _runs(bits8=_run(8, mean_kld=_base(8).mean_kld * 1.05))
    v = gate.compare(_runs(), worse)
    assert [(c.build, c.metric) for c in v.checks if not c.passed] == [("bits8", "mean_kld")]
    assert "bits8: mean_kld regressed" in v.failures()[0]


def test_p99_kld_is_shown_not_gated():
    # p99 of ~1,000 tokens moved 4.7 % between two machines' builds (the module doc): not a gate metric
    assert gate.compare(_runs(), _runs(bits4=_run(4, p99_kld=_base(4).p99_kld * 1.05))).passed


def test_size_increase_fails():
    v = gate.compare(_runs(), _runs(bits3=_run(3, file_bytes=int(_base(3).file_bytes * 1.025))))
    assert [(c.build, c.metric) for c in v.checks if not c.passed] == [("bits3", "file_bytes")]


def test_improvements_pass():
    better = {k: _run(int(k[4:]), scale=0.7, file_bytes=_base(int(k[4:])).file_bytes - 1000) for k in _runs()}
    v = gate.compare(_runs(), better)
    assert v.passed
    assert all(c.ratio < 1 for c in v.checks)


def test_tolerance_is_an_argument():
    worse = _runs(bits4=_run(4, ppl=_base(4).ppl * 1.03))
    assert gate.compare(_runs(), worse, tolerance=0.05).passed
    assert not gate.compare(_runs(), _runs(bits4=_run(4, ppl=_base(4).ppl * 1.006)), tolerance=0.005).passed


def test_not_comparable_is_an_error():
    other = _runs()
    other["bits4"].n_tokens = 2040
    with pytest.raises(BadOption, match="not comparable"):
        gate.compare(_runs(), other)
    with pytest.raises(BadOption, match="no baseline of that name"):
        gate.compare(_runs(), {"bits5": _run(4)})


def _write_runs(root, runs: dict[str, RunReport]):
    for name, r in runs.items():
        r.save(root / name)
    return [root / name for name in runs]


def test_write_baseline_then_gate_cli(tmp_path):
    base = tmp_path / "baseline"
    dirs = _write_runs(tmp_path / "runs", _runs())
    written = gate.write_baseline(gate.Settings(), dirs, base)
    assert (base / "accuracy_vs_size.png") in written and (base / "accuracy_vs_size.svg").exists()
    settings, baseline = gate.load_baseline(base)
    assert settings == gate.Settings()
    assert baseline["bits4"].builds[0].path == "bits4.gguf"  # no machine paths in a committed baseline
    cmds = json.loads((base / "baseline.json").read_text())["commands"]
    assert cmds[2].startswith("quantkit compress gemma3-270m --bits 4 --method gptq")

    runner = CliRunner()
    res = runner.invoke(cli, ["gate", "--baseline", str(base), "--out", str(tmp_path / "same"), *map(str, dirs)])
    assert res.exit_code == 0, res.output
    assert "gate passed: 12 checks, 0 regressions" in res.output
    md = (tmp_path / "same" / "gate.md").read_text()
    assert md.startswith("# quantkit gate: pass") and "| bits4 | ppl |" in md
    assert "| bits4 | file_bytes | 220,000,000 | 220,000,000 | 1.0000 | pass |" in md
    assert "| baseline --bits 4 | baseline |" in md and "| new --bits 4 | new |" in md
    assert (tmp_path / "same" / "accuracy_vs_size.png").stat().st_size > 10_000

    worse = _write_runs(tmp_path / "worse", {"bits4": _run(4, mean_kld=_base(4).mean_kld * 1.1)})
    res = runner.invoke(cli, ["gate", "--baseline", str(base), "--out", str(tmp_path / "w"), *map(str, worse)])
    assert res.exit_code == 1, res.output
    assert "FAIL bits4: mean_kld regressed" in res.output and "+10.00 %" in res.output
    assert "gate FAILED: 3 checks, 1 regressions" in res.output
    assert json.loads((tmp_path / "w" / "gate.json").read_text())["passed"] is False


def test_gate_chart_shows_both_series(tmp_path):
    paths = gate.chart(_runs(), _runs(bits4=_run(4, scale=1.5)), tmp_path / "c")
    svg = paths[1].read_text()
    assert "baseline" in svg and "new" in svg


def test_baseline_without_settings_is_clear(tmp_path):
    with pytest.raises(BadFile, match="no gate settings"):
        gate.Settings.load(tmp_path)


def test_committed_baseline_is_complete():
    settings, baseline = gate.load_baseline(gate.BASELINE_DIR)
    assert sorted(baseline) == [f"bits{b}" for b in sorted(settings.bits)]
    for name, r in baseline.items():
        b = gate.only_build(r, name)
        assert (r.text, r.n_tokens, r.judge) == (settings.text, settings.tokens // 512 * 255, settings.judge)
        assert all(getattr(b, m) is not None for m in gate.GATED)
    klds = [gate.only_build(baseline[f"bits{b}"], b).mean_kld for b in sorted(settings.bits)]
    assert klds == sorted(klds, reverse=True)  # more bits, closer to the source
    assert (gate.BASELINE_DIR / "accuracy_vs_size.png").exists() and (gate.BASELINE_DIR / "accuracy_vs_size.svg").exists()
    assert not list(gate.BASELINE_DIR.rglob("*.gguf"))

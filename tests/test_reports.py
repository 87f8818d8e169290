"""Run reports, charts and tables."""

import pytest

from quantkit.errors import BadFile
from quantkit.reports.charts import accuracy_vs_size, kld_by_preset, markdown_table
from quantkit.reports.results import BuildResult, RunReport


def _report():
    return RunReport(model="gemma-3-270m", text="wiki", n_tokens=1020, judge="llama.cpp", reference_ppl=16.9, builds=[
        BuildResult("quantkit --bits 4", "quantkit", 240_000_000, 4.5, 17.2, 0.01, 0.05, 95.0),
        BuildResult("llama.cpp Q4_0", "llama.cpp", 241_400_000, 4.5, 24.5, 0.37, 2.28, 71.0),
    ])


def test_report_round_trip(tmp_path):
    r = _report()
    r.save(tmp_path)
    assert RunReport.load(tmp_path) == r


def test_bad_report_is_clear(tmp_path):
    with pytest.raises(BadFile, match="no report.json"):
        RunReport.load(tmp_path)
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(BadFile, match="not a quantkit report"):
        RunReport.load(tmp_path)


def test_chart_and_table(tmp_path):
    paths = accuracy_vs_size([_report()], tmp_path / "chart")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size > 10_000
    assert "<svg" in paths[1].read_text()
    table = markdown_table([_report()])
    assert "| quantkit --bits 4 | quantkit | 240.0 | 4.500 | 17.2000 | 0.01000 |" in table
    assert table.index("quantkit --bits 4") < table.index("llama.cpp Q4_0")  # sorted by size


def test_kld_by_preset(tmp_path):
    r = RunReport(model="gemma-3-270m", text="wiki", n_tokens=1020, judge="llama.cpp", reference_ppl=16.9, builds=[
        BuildResult(f"{builder} {preset}", tool, size, 4.5, 20.0, kld, 1.0, 80.0)
        for preset, size in (("Q2_K", 237_000_000), ("Q4_0", 241_400_000))
        for builder, tool, kld in (("llama.cpp", "llama.cpp", 0.5), ("quantkit gptq", "quantkit", 0.2))
    ] + [BuildResult("unnamed", "quantkit", 1, 4.5, 20.0, 0.1, 1.0, 80.0)])
    png, svg = kld_by_preset(r, tmp_path / "bars")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = svg.read_text()
    # matplotlib's SVG keeps every drawn string as a comment: one tick per preset, one legend entry per builder,
    # nothing for a build whose name carries no preset
    for label in ("Q2_K", "Q4_0", "llama.cpp", "quantkit gptq"):
        assert f"<!-- {label} -->" in text
    assert "unnamed" not in text


def test_report_cli(tmp_path):
    from click.testing import CliRunner

    from quantkit.cli import cli

    _report().save(tmp_path / "run")
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "accuracy_vs_size.png").exists() and (tmp_path / "out" / "report.md").exists()


def test_scorer_matches_float64_oracle():
    """The float32 scorer against the definitions in float64 numpy, on a 262,144-wide vocabulary with logits of
    Gemma's range (softcapped to |30|) and a candidate a little off the reference."""
    import numpy as np
    import torch

    from quantkit.reports.metrics import Scorer, scored

    rng = np.random.default_rng(0)
    t, v = 80, 262_144
    ref = (np.tanh(rng.normal(0, 0.15, (t, v))) * 30).astype(np.float32)
    cand = (ref + rng.normal(0, 0.3, (t, v))).astype(np.float32)
    ids = rng.integers(0, v, t)
    s = Scorer()
    s.add(torch.from_numpy(cand), torch.from_numpy(ids), torch.from_numpy(ref))
    r = s.result()

    def log_softmax(a):
        a = a.astype(np.float64)[scored(t)]
        m = a.max(1, keepdims=True)
        return a - m - np.log(np.exp(a - m).sum(1, keepdims=True))

    lp, rp = log_softmax(cand), log_softmax(ref)
    nll = -lp[np.arange(lp.shape[0]), ids[scored(t).start + 1:]]
    kld = (np.exp(rp) * (rp - lp)).sum(1)
    assert r.n_tokens == len(nll) == t // 2 - 1
    assert abs(np.log(r.ppl) - nll.mean()) < 1e-6
    assert abs(r.mean_kld - kld.mean()) < 1e-6 * max(1.0, kld.mean()) and kld.mean() > 0.01
    assert abs(r.p99_kld - np.percentile(kld, 99)) < 1e-5
    assert r.top1 == pytest.approx(100 * np.mean(rp.argmax(1) == lp.argmax(1)))

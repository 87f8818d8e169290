"""The last stage of `quantkit compress`: judge the build against its source and write the run directory's report
(report.json, report.md, accuracy_vs_size.png/.svg)."""

from __future__ import annotations

from pathlib import Path

from quantkit.evaluate import evaluate
from quantkit.formats.atomic import atomic_write
from quantkit.formats.source import TensorSource
from quantkit.plan import Plan
from quantkit.reports.charts import accuracy_vs_size, markdown_table
from quantkit.reports.metrics import EvalResult
from quantkit.reports.results import BuildResult, RunReport
from quantkit.towers import on_device


def report_build(source: TensorSource, build: TensorSource, plan: Plan, name: str, file_bytes: int, out: Path,
                 text: str, n_tokens: int, judge: str, threads: int | None, mmproj_bytes: int | None = None,
                 progress: bool = True) -> EvalResult:
    """Evaluate `build` (named `name` in the report) on `n_tokens` of `text` with `source` as the reference, and
    write the report into `out` (with the mmproj's bytes, when the build has one)."""
    ev = evaluate(build, text, n_tokens, reference=source, judge=judge, threads=threads, progress=progress)
    r = ev.result
    report = RunReport(model=str(source.path), text=text, n_tokens=r.n_tokens, judge=ev.judge, builds=[
        BuildResult(name, "quantkit", file_bytes, 8 * plan.nbytes / plan.n_params, r.ppl, r.mean_kld, r.p99_kld,
                    r.top1, str(build.path), mmproj_bytes)])
    report.save(out)
    accuracy_vs_size([report], out / "accuracy_vs_size")
    devices = "" if mmproj_bytes is None else "\n\n" + on_device(file_bytes, mmproj_bytes, budgeted=False)
    atomic_write(out / "report.md", (plan.summary() + devices + "\n\n" + markdown_table([report])).encode())
    return r

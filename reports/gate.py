"""The CI perplexity-chart gate: the 270M rebuilt at `--bits 2/3/4/8` with fixed settings,
evaluated on a fixed slice and compared with the committed baselines.

    reports/baselines/gemma3-270m/
        baseline.json               the `quantkit compress` options every baseline build was made with
        bits{2,3,4,8}/report.json   each build's file size, PPL, mean / p99 KLD and top-1 (from that command)
        accuracy_vs_size.png/.svg   the baseline chart

A build fails the gate when its PPL, mean KLD or file size (`GATED`) is larger than its
baseline's by more than the tolerance, relative: new / baseline > 1 + tolerance.
Improvements pass; they become the baseline when `quantkit gate --write-baseline`'s
files are committed. p99 KLD and top-1 agreement are shown, not gated: p99 KLD for the
reason below, top-1 because it moves with mean KLD. Every file the gate writes is
written atomically (formats.atomic).

Tolerance, 2 %: run-to-run noise of the gate's measurements on the 270M. On one machine a
rebuild is byte-identical and the judge deterministic (also with 1 or 2 threads, and
micro-batches of 512 or 128 tokens), so the noise is 0. What can move the numbers is
another machine's SIMD code paths (another BLAS reduction order picks other GPTQ roundings
and allocator types). Rebuilt with torch, MKL, oneDNN and Numba limited to AVX2 on an
AVX-512 machine: `--bits 4` PPL -0.37 %, mean KLD +0.12 %, p99 KLD +4.7 %; `--bits 2` PPL
+0.87 %, mean KLD -0.50 %, p99 KLD +0.19 %. So PPL and mean KLD are gated at 2 % and p99
KLD is not. A genuinely worse quantizer (`--method rtn` at the same `--bits 4` budget) is
far outside it (tests/integration/test_ci_gate.py).

The judge's machine moves the numbers too: on the AMD EPYC (AVX-512) machine CI moved to in
December 2026, llama.cpp built there judged byte-identical builds (same sha256 as the old code
made there) at mean KLD -1.9 % (bits2), +2.9 % (bits3), -1.3 % (bits4) and +3.1 % (bits8) from
the baselines made on the earlier machine, so the baselines were rewritten on the new one.
CI machines are drawn from both kinds: back on the Intel Xeon kind (AVX-512; llama.cpp built without AMX), the
committed AMD baselines pass, bits2 mean KLD the closest at +1.92 % (`quantkit gate`, 2026-12-02). Rewriting the
baselines on the Intel kind would fail the AMD one (+3.1 % on bits8), so they stay the AMD kind's.

Rewritten on the AMD kind on 2026-12-03 (stop 25), after the allocator gained IQ1_S, IQ1_M, IQ2_S and IQ3_S and GPTQ
the lattice types. `pytest -m integration tests/integration/test_ci_gate.py` passed against the old baselines with:
bits2 PPL -1.25 %, mean KLD +1.86 % (new plan: IQ3_XXS, IQ2_XS, IQ2_XXS and one IQ1_S down_proj); bits3 PPL -5.93 %,
mean KLD -4.21 %; bits4 and bits8 same plans and sizes, mean KLD +1.10 % and -0.51 % (stop 24's oneDNN products
changed the sums' order). Its four run directories became the baseline (`quantkit gate --write-baseline DIR...`), so
that bits2's +1.86 % does not eat the margin the other machine kind needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from quantkit.errors import BadFile, BadOption, QuantkitError
from quantkit.formats.atomic import atomic_write
from quantkit.reports.charts import accuracy_vs_size, markdown_table
from quantkit.reports.results import REPORT_NAME, BuildResult, RunReport, json_bytes

BASELINE_DIR = Path(__file__).parent / "baselines" / "gemma3-270m"
SETTINGS_NAME = "baseline.json"
TOLERANCE = 0.02
GATED = ("ppl", "mean_kld", "file_bytes")  # larger is worse for each; p99 KLD is shown, not gated (see above)
KEPT = (REPORT_NAME, "report.md", "plan.json")  # what a baseline keeps of a run directory (never the GGUF)


@dataclass(frozen=True)
class Settings:
    """The gate's fixed `quantkit compress` options; one build per `bits`, in run directory `bits{B}`."""

    model: str = "gemma3-270m"
    bits: tuple[int, ...] = (2, 3, 4, 8)
    method: str = "gptq"
    calib: str = "c4"
    calib_tokens: int = 4096
    text: str = "wiki"
    tokens: int = 2048
    judge: str = "llama.cpp"

    def compress_args(self, bits: int, out: Path) -> list[str]:
        return ["compress", self.model, "--bits", str(bits), "--method", self.method, "--calib", self.calib,
                "--calib-tokens", str(self.calib_tokens), "--text", self.text, "--tokens", str(self.tokens),
                "--judge", self.judge, "--out", str(out)]

    def save(self, base_dir: Path) -> Path:
        commands = [" ".join(["quantkit", *self.compress_args(b, Path(f"bits{b}"))]) for b in self.bits]
        return atomic_write(base_dir / SETTINGS_NAME, json_bytes({"settings": asdict(self), "commands": commands}))

    @staticmethod
    def load(base_dir: Path) -> "Settings":
        path = base_dir / SETTINGS_NAME
        try:
            d = json.loads(path.read_text())["settings"]
            return Settings(**{**d, "bits": tuple(d["bits"])})
        except FileNotFoundError:
            raise BadFile(f"{path}: no gate settings (is {base_dir} a baseline directory?)") from None
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise BadFile(f"{path}: not gate settings ({e})") from e


@dataclass
class Check:
    build: str  # run directory name, e.g. "bits4"
    metric: str
    baseline: float
    new: float
    ratio: float  # new / baseline
    passed: bool

    def message(self, tolerance: float) -> str:
        return (f"{self.build}: {self.metric} regressed: {self.new:.6g} vs baseline {self.baseline:.6g} "
                f"({(self.ratio - 1) * 100:+.2f} %, tolerance {tolerance * 100:.1f} %)")


@dataclass
class Verdict:
    tolerance: float
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        return [c.message(self.tolerance) for c in self.checks if not c.passed]

    def table(self) -> str:
        rows = ["| build | metric | baseline | new | new / baseline | verdict |", "|---|---|---:|---:|---:|---|"]
        for c in self.checks:
            base, new = (f"{int(c.baseline):,}", f"{int(c.new):,}") if c.metric == "file_bytes" else (f"{c.baseline:.5f}", f"{c.new:.5f}")
            rows.append(f"| {c.build} | {c.metric} | {base} | {new} | {c.ratio:.4f} | "
                        f"{'pass' if c.passed else '**FAIL**'} |")
        return "\n".join(rows) + "\n"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "tolerance": self.tolerance, "checks": [asdict(c) for c in self.checks]}


def only_build(report: RunReport, where: Path | str) -> BuildResult:
    if len(report.builds) != 1:
        raise BadFile(f"{where}: {len(report.builds)} builds in report.json, the gate compares run directories of one build")
    return report.builds[0]


def load_runs(run_dirs: list[Path]) -> dict[str, RunReport]:
    """Run directories by name (`bits4`, ...): the name pairs a new build with its baseline."""
    runs = {}
    for d in run_dirs:
        if d.name in runs:
            raise BadOption(f"{d}: two run directories named {d.name!r}; the name pairs a build with its baseline")
        runs[d.name] = RunReport.load(d)
    return runs


def load_baseline(base_dir: Path) -> tuple[Settings, dict[str, RunReport]]:
    settings = Settings.load(base_dir)
    return settings, load_runs([base_dir / f"bits{b}" for b in settings.bits])


def compare(baseline: dict[str, RunReport], new: dict[str, RunReport], tolerance: float = TOLERANCE) -> Verdict:
    """Every new run against the baseline run of the same name, on every gated metric."""
    checks = []
    for name, rep in new.items():
        if name not in baseline:
            raise BadOption(f"{name}: no baseline of that name (the baseline has {', '.join(baseline)})")
        base = baseline[name]
        if (rep.text, rep.n_tokens, rep.judge) != (base.text, base.n_tokens, base.judge):
            raise BadOption(f"{name}: evaluated on {rep.text} ({rep.n_tokens} tokens, judge {rep.judge}), the baseline on "
                            f"{base.text} ({base.n_tokens} tokens, judge {base.judge}): not comparable")
        b, n = only_build(base, name), only_build(rep, name)
        for metric in GATED:
            bv, nv = getattr(b, metric), getattr(n, metric)
            if bv is None:
                continue
            if nv is None:
                raise BadOption(f"{name}: no {metric} in the new report (the baseline has one)")
            ratio = nv / bv if bv else (1.0 if nv == bv else float("inf"))
            checks.append(Check(name, metric, float(bv), float(nv), ratio, ratio <= 1 + tolerance))
    return Verdict(tolerance, checks)


def rebuild(settings: Settings, out_dir: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Runs `quantkit compress` once per `bits` into out_dir/bits{B}; returns the run directories."""
    dirs = []
    for b in settings.bits:
        run_dir = out_dir / f"bits{b}"
        args = settings.compress_args(b, run_dir)
        log(f"quantkit {' '.join(args)}")
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "quantkit", *args], stdout=subprocess.PIPE, text=True)
        lines = proc.stdout.strip().splitlines() or [""]
        if proc.returncode:
            raise QuantkitError(f"quantkit compress --bits {b} failed with exit status {proc.returncode}: {lines[-1]}")
        log(f"{lines[-1]}  [{time.perf_counter() - t:.0f} s]")
        dirs.append(run_dir)
    return dirs


def side_by_side(baseline: dict[str, RunReport], new: dict[str, RunReport]) -> list[RunReport]:
    """Two series, 'baseline --bits B' and 'new --bits B', for the builds in `new`."""
    series = []
    for tool, runs in (("baseline", baseline), ("new", new)):
        builds = [BuildResult(**{**asdict(only_build(r, name)), "name": f"{tool} {label(name)}", "tool": tool})
                  for name, r in runs.items() if name in new]
        series.append(RunReport(next(iter(runs.values())).model, "", 0, "", builds))
    return series


def chart(baseline: dict[str, RunReport], new: dict[str, RunReport], out_stem: Path) -> list[Path]:
    """The new builds beside their baselines on the same axes."""
    return accuracy_vs_size(side_by_side(baseline, new), out_stem, title="gate: new builds beside the baseline")


def label(name: str) -> str:
    return f"--bits {name[4:]}" if name.startswith("bits") else name


def write_report(verdict: Verdict, baseline: dict[str, RunReport], new: dict[str, RunReport], out_dir: Path) -> list[Path]:
    """gate.md (table and failures), gate.json (the verdict) and the chart, in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = chart(baseline, new, out_dir / "accuracy_vs_size")
    status = "pass" if verdict.passed else "FAIL"
    md = [f"# quantkit gate: {status}", "", f"Tolerance {verdict.tolerance * 100:.1f} % (new / baseline ≤ "
          f"{1 + verdict.tolerance:.3f} for {', '.join(GATED)}).", "", verdict.table()]
    md += [f"- {m}" for m in verdict.failures()] + ([""] if verdict.failures() else [])
    md += [f"![new beside baseline]({charts[0].name})", "", markdown_table(side_by_side(baseline, new))]
    return [atomic_write(out_dir / "gate.md", "\n".join(md).encode("utf-8")),
            atomic_write(out_dir / "gate.json", json_bytes(verdict.to_dict())), *charts]


def write_baseline(settings: Settings, run_dirs: list[Path], base_dir: Path) -> list[Path]:
    """The run directories' reports (GGUF paths reduced to file names), the settings and the chart."""
    runs = load_runs(run_dirs)
    expected = [f"bits{b}" for b in settings.bits]
    if sorted(runs) != sorted(expected):
        raise BadOption(f"a baseline needs run directories {', '.join(expected)}; got {', '.join(runs)}")
    written = []
    for d in run_dirs:
        dest = base_dir / d.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in KEPT[1:]:
            if (d / name).exists():
                written.append(atomic_write(dest / name, (d / name).read_bytes()))
        rep = runs[d.name]
        rep.model = Path(rep.model).name
        for b in rep.builds:
            b.path = b.path and Path(b.path).name
        written.append(rep.save(dest))
    written.append(settings.save(base_dir))
    written += accuracy_vs_size(list(runs.values()), base_dir / "accuracy_vs_size",
                                title=f"gate baseline: {settings.model} --bits {'/'.join(map(str, settings.bits))}, "
                                      f"{settings.tokens} tokens of {settings.text}, judge {settings.judge}")
    return written

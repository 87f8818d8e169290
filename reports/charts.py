"""Accuracy-vs-size charts and markdown tables from run reports."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; deterministic file output
import matplotlib.pyplot as plt  # noqa: E402

from quantkit.formats.atomic import atomic_write  # noqa: E402
from quantkit.reports.results import BuildResult, RunReport  # noqa: E402

STYLE = {"quantkit": dict(marker="o", color="tab:blue"), "llama.cpp": dict(marker="s", color="tab:orange"),
         # the gate's chart (quantkit.reports.gate): new builds beside the committed baseline
         "baseline": dict(marker="s", color="tab:gray"), "new": dict(marker="o", color="tab:green")}


def _points(builds: list[BuildResult], metric: str):
    return [(b.file_bytes / 1e6, getattr(b, metric), b) for b in builds if getattr(b, metric) is not None]


def accuracy_vs_size(reports: list[RunReport], out_stem: Path, title: str | None = None) -> list[Path]:
    """Two panels, PPL and mean KLD against file size, every build of every report;
    written as PNG and SVG (`out_stem`.png / .svg)."""
    builds = [b for r in reports for b in r.builds]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in ((axes[0], "ppl", "perplexity"), (axes[1], "mean_kld", "mean KL divergence")):
        for tool, style in STYLE.items():
            pts = sorted(_points([b for b in builds if b.tool == tool], metric), key=lambda p: p[0])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none", label=tool, **style)
                for x, y, b in pts:
                    ax.annotate(b.name.replace(f"{tool} ", ""), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        refs = {r.reference_ppl for r in reports if r.reference_ppl}
        if metric == "ppl" and refs:
            ax.axhline(min(refs), color="gray", linestyle=":", label="reference")
        ax.set_xlabel("file size (MB)")
        ax.set_ylabel(label)
        if metric == "mean_kld":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    models = sorted({r.model for r in reports})
    fig.suptitle(title or f"accuracy vs size: {', '.join(Path(m).name for m in models)}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_stem)


def _save(fig, out_stem: Path) -> list[Path]:
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120, metadata={"Date": None} if ext == "svg" else {"Software": None})
        paths.append(atomic_write(out_stem.with_suffix(f".{ext}"), buf.getvalue()))
    plt.close(fig)
    return paths


def kld_by_preset(report: RunReport, out_stem: Path, title: str | None = None) -> list[Path]:
    """Mean KLD as grouped bars, one group per preset, one bar per builder: for builds named
    "<builder> <preset>" that share a file size (benches/quality.py), where a scatter against size
    would stack every builder of a preset on one point. Written as PNG and SVG."""
    presets: list[str] = []
    builders: list[str] = []
    kld: dict[tuple[str, str], float] = {}
    tools: dict[str, str] = {}
    for b in report.builds:
        builder, _, preset = b.name.rpartition(" ")
        if not builder or b.mean_kld is None:
            continue
        if preset not in presets:
            presets.append(preset)
        if builder not in builders:
            builders.append(builder)
        kld[builder, preset] = b.mean_kld
        tools[builder] = b.tool
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / max(1, len(builders))
    # shades per tool: llama.cpp's builders in oranges, quantkit's in blues, darker = later in the report
    same_tool = {t: [b for b in builders if tools[b] == t] for t in tools.values()}
    for i, builder in enumerate(builders):
        peers = same_tool[tools[builder]]
        shade = plt.get_cmap("Oranges" if tools[builder] == "llama.cpp" else "Blues")
        color = shade(0.35 + 0.55 * (peers.index(builder) + 1) / len(peers))
        xs = [k + (i - (len(builders) - 1) / 2) * width for k, p in enumerate(presets) if (builder, p) in kld]
        ys = [kld[builder, p] for p in presets if (builder, p) in kld]
        ax.bar(xs, ys, width, label=builder, color=color, edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(presets)), presets)
    ax.set_yscale("log")
    ax.set_ylabel("mean KL divergence (log)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(builders))
    ax.set_title(title or f"mean KLD by preset: {Path(report.model).name}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_stem)


def markdown_table(reports: list[RunReport]) -> str:
    rows = ["| build | tool | MB | bpw | PPL | mean KLD | KLD p99 | top-1 % |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in reports:
        for b in sorted(r.builds, key=lambda b: b.file_bytes):
            rows.append(
                f"| {b.name} | {b.tool} | {b.file_bytes / 1e6:.1f} | {b.bpw:.3f} | {b.ppl:.4f} | "
                f"{fmt(b.mean_kld, '.5f')} | {fmt(b.p99_kld, '.5f')} | {fmt(b.top1, '.2f')} |"
            )
    return "\n".join(rows) + "\n"

"""The `quantkit` command line. Errors are caught here, at the edge: a one-line
message and exit status 2 for bad input, 1 for internal failures; `--debug`
shows the traceback."""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

import click

from quantkit import __version__
from quantkit.errors import QuantkitError

TEXT_HELP = "Text: wiki (built-in held-out), c4 (built-in calibration), a text file, FILE.jsonl:FIELD, or hf:NAME[:CONFIG]:SPLIT:FIELD."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quantkit")
@click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """quantkit: calibrated low-bit quantization for Gemma 4 and Gemma 3.

    Loads full-precision weights, runs calibration text through its own reference
    forward, writes GGUF (llama.cpp) and compressed-tensors safetensors builds, and
    reports accuracy against size.
    """
    ctx.obj = {"debug": debug}


@cli.command("eval")
@click.argument("model")
@click.option("--from", "from_path", metavar="PATH", help="Where a Gemma 4 preset's checkpoint lies, if not in the Hugging Face cache.")
@click.option("--ref", "ref_model", metavar="MODEL", help="Reference model for KL divergence and top-1 agreement (same tokenizer).")
@click.option("--text", default="wiki", show_default=True, metavar="SRC", help=TEXT_HELP)
@click.option("--tokens", default=8192, show_default=True, type=click.IntRange(min=1), help="Tokens to evaluate, in 512-token chunks (llama-perplexity's convention: second half of each chunk scored).")
@click.option("--judge", type=click.Choice(["quantkit", "llama.cpp"]), default="quantkit", show_default=True,
              help="Whose forward computes the logits: quantkit's reference forward, or llama.cpp (needs llama-cpp-python; GGUF files only, other models run in quantkit).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the forward (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
def eval_cmd(model: str, from_path: str | None, ref_model: str | None, text: str, tokens: int, judge: str,
             threads: int | None, as_json: bool) -> None:
    """Perplexity of MODEL on a text source, through quantkit's forward.

    MODEL is a preset (gemma3-270m, e2b, e4b, 26b-a4b, 31b), a Hugging Face
    checkpoint directory or a GGUF file. With --ref, also mean / p99 KL divergence
    and top-1 agreement against the reference.
    """
    import torch

    from quantkit.evaluate import evaluate
    from quantkit.sources import open_source

    if threads:
        torch.set_num_threads(threads)
    src = open_source(model, from_path)
    ref = open_source(ref_model) if ref_model else None
    report = evaluate(src, text, tokens, reference=ref, judge=judge, threads=threads,
                      progress=sys.stderr.isatty() or not as_json)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    r = report.result
    click.echo(f"model      {report.model}  (judge: {report.judge})")
    click.echo(f"text       {text}: {r.n_tokens} scored tokens ({r.n_tokens // (report.chunk // 2 - 1)} chunks of {report.chunk})")
    click.echo(f"perplexity {r.ppl:.4f} ± {r.ppl_stderr:.4f}")
    if r.mean_kld is not None:
        click.echo(f"KLD        mean {r.mean_kld:.5f} ± {r.kld_stderr:.5f}, p99 {r.p99_kld:.5f}")
        click.echo(f"top-1      {r.top1:.2f}% agreement with {report.reference}")
    click.echo(f"time       {report.seconds:.1f} s")


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Directory for accuracy_vs_size.png/.svg and report.md.")
@click.option("--title", help="Chart title (default: the model names).")
def report_cmd(run_dirs: tuple[Path, ...], out_dir: Path, title: str | None) -> None:
    """Accuracy-vs-size charts and a markdown table from run directories.

    Each RUN_DIR holds a report.json written by `quantkit compress` or a bench;
    every build in them (quantkit's and llama.cpp's, when measured side by side)
    is drawn on the same axes: perplexity and mean KL divergence against file size.
    """
    from quantkit.reports.charts import accuracy_vs_size, markdown_table
    from quantkit.reports.results import RunReport

    reports = [RunReport.load(d) for d in run_dirs]
    paths = accuracy_vs_size(reports, out_dir / "accuracy_vs_size", title)
    table = markdown_table(reports)
    (out_dir / "report.md").write_text(table)
    click.echo(table, nl=False)
    for p in [*paths, out_dir / "report.md"]:
        click.echo(f"wrote {p}")


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (metadata, tensors, totals, bits per weight).")
@click.option("--all", "show_all", is_flag=True, help="List every tensor (default: the first 40 and the totals).")
def inspect_cmd(path: Path, as_json: bool, show_all: bool) -> None:
    """What is inside a GGUF file, a safetensors build directory or a preset.

    Prints a metadata summary, a table of tensors (type, shape, bytes, bits per
    weight), totals by tensor group (embeddings, PLE, attention, MLP, experts,
    norms) and the whole file's bits per weight.
    """
    from quantkit.inspect import inspect_path
    from quantkit.sources import PRESETS, resolve

    inv = inspect_path(resolve(str(path)) if str(path) in PRESETS else path)
    if as_json:
        click.echo(json.dumps(inv.to_dict(), indent=2, default=str))
        return
    click.echo(f"{inv.path}  ({inv.format}, {inv.file_bytes:,} bytes, {len(inv.tensors)} tensors)")
    for k, v in inv.metadata.items():
        if not k.startswith("tokenizer.ggml.") or not isinstance(v, str) or not v.startswith("["):
            click.echo(f"  {k} = {v}")
    rows = inv.tensors if show_all else inv.tensors[:40]
    click.echo(f"\n{'tensor':<48}{'type':>8}  {'shape':<22}{'bytes':>14}{'bpw':>8}")
    for t in rows:
        bpw = f"{8 * t.nbytes / t.n_params:.3f}" if t.n_params else "-"
        click.echo(f"{t.name:<48}{t.type:>8}  {'x'.join(map(str, t.shape)):<22}{t.nbytes:>14,}{bpw:>8}")
    if len(rows) < len(inv.tensors):
        click.echo(f"... {len(inv.tensors) - len(rows)} more (--all lists them)")
    click.echo(f"\n{'group':<12}{'params':>16}{'bytes':>16}{'bpw':>8}")
    for g, t in inv.totals().items():
        click.echo(f"{g:<12}{t['params']:>16,}{t['bytes']:>16,}{t['bpw'] or 0:>8.3f}")
    tensor_bytes = sum(t.nbytes for t in inv.tensors)
    click.echo(f"{'tensors':<12}{inv.n_params:>16,}{tensor_bytes:>16,}{8 * tensor_bytes / max(inv.n_params, 1):>8.3f}")
    click.echo(f"{'file':<12}{'':>16}{inv.file_bytes:>16,}   (header and padding {inv.file_bytes - tensor_bytes:,} bytes)")


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so writers remove their temporary files on the way out.
    raise KeyboardInterrupt


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except QuantkitError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # internal error: one line unless --debug
        if debug:
            traceback.print_exc()
        else:
            click.echo(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
        sys.exit(1)

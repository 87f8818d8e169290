"""The `quantkit` command line. Errors are caught here, at the edge: a one-line
message and exit status 2 for bad input, 1 for internal failures; `--debug`
shows the traceback."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from quantkit import __version__
from quantkit.errors import IOFailure, QuantkitError

TEXT_HELP = "Text: wiki (built-in held-out), c4 (built-in calibration), a text file, FILE.jsonl:FIELD, or hf:NAME[:CONFIG]:SPLIT:FIELD."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quantkit")
@click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
def cli(debug: bool) -> None:
    """quantkit: calibrated low-bit quantization for Gemma 4 and Gemma 3.

    Loads full-precision weights, runs calibration text through its own reference
    forward, writes GGUF (llama.cpp) and compressed-tensors safetensors builds, and
    reports accuracy against size.
    """
    # --debug is read by main(), which handles every error


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
    checkpoint directory (a compressed-tensors build from `compress --format
    safetensors` too) or a GGUF file. With --ref, also mean / p99 KL divergence
    and top-1 agreement against the reference. --judge llama.cpp needs GGUF files on
    both sides; otherwise both run in quantkit's forward.
    """
    import torch

    from quantkit.evaluate import evaluate
    from quantkit.sources import open_source

    if threads:
        torch.set_num_threads(threads)
    src = open_source(model, from_path)
    ref = open_source(ref_model) if ref_model else None
    report = evaluate(src, text, tokens, reference=ref, judge=judge, threads=threads,
                      progress=sys.stderr.isatty())
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


def parse_size(text: str) -> int:
    """'1.4GB', '1400MB', '1.3GiB', '1500000000' -> bytes (decimal units unless 'iB')."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?i?b?)\s*", text.lower())
    if not m:
        raise click.BadParameter(f"{text!r}: expected a size such as 1.4GB, 1400MB or 1.3GiB")
    unit = m.group(2).rstrip("b")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}[unit]
    return int(float(m.group(1)) * scale)


@cli.command("compress")
@click.argument("model")
@click.option("--bits", type=float, metavar="B",
              help="Best build at the size of a uniform B-bit build: B + 0.5 bits per weight (one fp16 scale per 32 "
                   "weights), llama.cpp's fallback type where rows don't fit the B-bit K-quant's 256-block. B is any "
                   "number from 1.1 to 8 (1.5, 2, 2.5, 3.5, 5, ...); --format safetensors takes 2, 4 or 8.")
@click.option("--max-size", metavar="SIZE", help="Best build whose file is at most SIZE (e.g. 1.4GB, 1400MB, 1.3GiB).")
@click.option("--like", "like", metavar="PRESET", help="llama.cpp's own per-tensor types for a llama-quantize preset (Q2_K, Q3_K_M, Q4_0, IQ4_XS, Q4_K_M, Q8_0, ...).")
@click.option("--imatrix", "imatrix_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="llama.cpp's GGUF imatrix (llama-imatrix's, or `quantkit imatrix`'s) as the importance wherever "
                   "quantkit would use its own E[x^2]: --method imatrix (then nothing is calibrated), the budget's "
                   "sensitivity and the lookup tables where the file has them. With --method gptq every linear's "
                   "Hessian still comes from calibration. Checked against the model: an entry for "
                   "another model's tensor, a shape mismatch or a missing decoder tensor is an error.")
@click.option("--recipe", "recipe_file", metavar="PLAN_JSON", type=click.Path(dir_okay=False),
              help="Rebuild exactly the per-tensor types of an earlier run's plan.json (on another machine, with another "
                   "--method); refused, naming the first tensor that differs, if it was made for another model.")
@click.option("--type", "type_name", metavar="TYPE", help="Every quantizable tensor in one ggml type (Q8_0, Q4_K, ...; llama.cpp's fallback for rows that don't fit).")
@click.option("--format", "fmt", type=click.Choice(["gguf", "safetensors"]), default="gguf", show_default=True,
              help="gguf: one .gguf file for llama.cpp. safetensors: a Hugging Face directory in compressed-tensors' "
                   "pack-quantized format for transformers and vLLM; takes --bits 2, 4 or 8: every Linear weight of the "
                   "text decoder as B-bit integers with one scale (in the model's dtype) per --group-size weights, "
                   "symmetric unless --asym; embeddings, norms, the MoE router and experts and vision/audio towers "
                   "stay as they are.")
@click.option("--group-size", type=click.Choice(["32", "64", "128", "-1"]), default=None,
              help="--format safetensors: weights per scale along a row, -1 for one scale per output channel; a row "
                   "that is not a multiple of it takes the largest smaller group that fits, else -1.  [default: 128]")
@click.option("--asym", is_flag=True, help="--format safetensors: asymmetric (scale and zero point per group). "
              "transformers loads these only with CompressedTensorsConfig(dequantize=True).")
@click.option("--tensor-type", "tensor_types", metavar="REGEX=TYPE", multiple=True,
              help="llama-quantize's --tensor-type: every quantizable tensor whose GGUF name REGEX matches (anywhere; the "
                   "first matching pattern wins) takes TYPE, or llama.cpp's fallback where its rows don't fit. "
                   "Repeatable; combines with --type, --like, --bits, --max-size (a budget spends what the forced "
                   "tensors leave) and --recipe. --dry-run lists what each matched; a pattern matching nothing is an "
                   "error.")
@click.option("--token-embedding-type", metavar="TYPE",
              help="llama-quantize's --token-embedding-type: token_embd and per_layer_token_embd (the latter unless a "
                   "--tensor-type names it).")
@click.option("--output-tensor-type", metavar="TYPE",
              help="llama-quantize's --output-tensor-type: the output head, which in Gemma is the tied token_embd "
                   "(and per_layer_token_embd) unless --token-embedding-type or a --tensor-type names them.")
@click.option("--mmproj-type", type=click.Choice(["F16", "BF16", "F32", "Q8_0"], case_sensitive=False), default="F16",
              show_default=True,
              help="A multimodal Gemma 4 checkpoint's vision and audio towers are written as llama.cpp's mmproj GGUF "
                   "(OUT/mmproj-NAME-TYPE.gguf, what llama.cpp's converter writes with --mmproj) beside the text "
                   "build, in this type: F16 as the public releases; Q8_0 quantizes the towers' large matrices and "
                   "keeps what llama.cpp keeps in F32. Not calibrated, not part of the --max-size budget (the total "
                   "is printed). Sources without towers write none and say so.")
@click.option("--no-mmproj", is_flag=True, help="Text only: write no mmproj for a multimodal checkpoint.")
@click.option("--ple-type", metavar="TYPE", help="Force the Per-Layer Embedding table's type instead of letting the budget decide.")
@click.option("--method", type=click.Choice(["gptq", "imatrix", "rtn"]), default="gptq", show_default=True,
              help="gptq: error feedback inside the ggml formats; imatrix: llama.cpp's importance-weighted search; rtn: llama.cpp's data-free rounding.")
@click.option("--calib", default="c4", show_default=True, metavar="SRC", help="Calibration text. " + TEXT_HELP)
@click.option("--calib-tokens", type=click.IntRange(min=512),
              help="Calibration tokens (in 512-token sequences). Default: 16,384 for models of up to 512 Mi decoder "
                   "linear weights per token (the 270M has 100 M); above that 65,536 x 128 Mi / the model's, so that "
                   "a calibration pass costs about the same (E2B: 4,608); at least 4,096.")
@click.option("--text", default="wiki", show_default=True, metavar="SRC", help="Evaluation text for the report. " + TEXT_HELP)
@click.option("--tokens", "eval_tokens", default=8192, show_default=True, type=click.IntRange(min=0), help="Evaluation tokens for the report; 0 skips evaluation.")
@click.option("--judge", type=click.Choice(["quantkit", "llama.cpp"]), default="quantkit", show_default=True, help="Who evaluates the build (llama.cpp needs llama-cpp-python).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Output directory (default: out/MODEL-RECIPE).")
@click.option("--from", "from_path", metavar="PATH", help="Where a Gemma 4 preset's checkpoint lies, if not in the Hugging Face cache.")
@click.option("--dry-run", is_flag=True, help="Print the plan (types and bytes per tensor group) and stop; reads headers only.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Where calibration runs.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all cores).")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --out from its last completed block (same model, options and "
                   "threads; the result is the same bytes). Without it, a run refuses an --out that holds one.")
def compress_cmd(model, bits, max_size, like, imatrix_file, recipe_file, type_name, fmt, group_size, asym, tensor_types,
                 token_embedding_type, output_tensor_type, mmproj_type, no_mmproj, ple_type, method, calib, calib_tokens,
                 text, eval_tokens, judge, out_dir, from_path, dry_run, device, threads, resume) -> None:
    """Quantize MODEL to a GGUF build that llama.cpp runs (or, with --format safetensors, a
    compressed-tensors directory for transformers and vLLM), with a report.

    MODEL is a preset (gemma3-270m, e2b, e4b, 26b-a4b, 31b), a Hugging Face checkpoint
    directory or a GGUF file. Give one of --bits, --max-size, --like, --recipe or --type. The
    output directory receives the build (and, for a multimodal Gemma 4 checkpoint, its
    mmproj), plan.json, report.json, report.md and the accuracy_vs_size charts (PNG and SVG).
    """
    import torch

    from quantkit.compress import compress
    from quantkit.options import CompressOptions, default_calib_tokens, default_out
    from quantkit.overrides import Overrides
    from quantkit.sources import open_source

    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("--device cuda: no CUDA device is available to torch", param_hint="--device")
    if fmt == "gguf" and (group_size is not None or asym):
        raise click.BadParameter("--group-size and --asym are options of --format safetensors", param_hint="--format")
    opts = CompressOptions(type_name=type_name, bits=int(bits) if bits is not None and bits.is_integer() else bits,
                           max_size=parse_size(max_size) if max_size else None, like=like, recipe_file=recipe_file,
                           imatrix_file=imatrix_file,
                           ple_type=ple_type,
                           overrides=Overrides.parse(tensor_types, token_embedding_type, output_tensor_type),
                           method=method, calib=calib, text=text, eval_tokens=eval_tokens,
                           judge=judge, format=fmt, group_size=int(group_size or 128), symmetric=not asym,
                           mmproj_type=None if no_mmproj else mmproj_type.upper(),
                           dry_run=dry_run, device=device, progress=sys.stderr.isatty())
    src = open_source(model, from_path)
    opts.calib_tokens = calib_tokens or default_calib_tokens(src)
    out = out_dir or default_out(model, opts)
    result = compress(src, out, opts, resume=resume, threads=threads, log=click.echo)
    r = result.evaluation
    if r is not None:
        click.echo(f"PPL {r.ppl:.4f}  mean KLD {r.mean_kld:.5f}  p99 KLD {r.p99_kld:.5f}  top-1 {r.top1:.2f}%  "
                   f"({r.n_tokens} tokens of {text}, judge {judge}); report in {out}")


@cli.command("imatrix")
@click.argument("model")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The imatrix file to write (llama.cpp's GGUF imatrix format).")
@click.option("--calib", default="c4", show_default=True, metavar="SRC", help="Calibration text. " + TEXT_HELP)
@click.option("--calib-tokens", type=click.IntRange(min=512),
              help="Calibration tokens, in 512-token chunks (llama-imatrix's -c 512). Default: as compress's.")
@click.option("--from", "from_path", metavar="PATH", help="Where a Gemma 4 preset's checkpoint lies, if not in the Hugging Face cache.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all cores).")
def imatrix_cmd(model: str, out_path: Path, calib: str, calib_tokens: int, from_path: str | None,
                threads: int | None) -> None:
    """Write an importance matrix for MODEL that `llama-quantize --imatrix` reads.

    Runs quantkit's streaming capture over the calibration text and writes each
    linear weight's sum of squared inputs per column and its token count, under
    llama.cpp's tensor names, as llama-imatrix does (the tied token embedding is
    left out, as llama-imatrix leaves it out).
    """
    import torch

    from quantkit.calibration.imatrix import capture_imatrix, write_imatrix
    from quantkit.options import default_calib_tokens
    from quantkit.sources import open_source

    if threads:
        torch.set_num_threads(threads)
    src = open_source(model, from_path)
    imatrix = capture_imatrix(src, calib, calib_tokens or default_calib_tokens(src), progress=sys.stderr.isatty())
    write_imatrix(out_path, imatrix)
    click.echo(f"wrote {out_path}: {len(imatrix.sums)} matrices, {imatrix.chunk_count} chunks of "
               f"{imatrix.chunk_size} tokens of {calib}")


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
    from quantkit.formats.atomic import atomic_write
    from quantkit.reports.charts import accuracy_vs_size, markdown_table
    from quantkit.reports.results import RunReport

    reports = [RunReport.load(d) for d in run_dirs]
    paths = accuracy_vs_size(reports, out_dir / "accuracy_vs_size", title)
    table = markdown_table(reports)
    atomic_write(out_dir / "report.md", table.encode())
    click.echo(table, nl=False)
    for p in [*paths, out_dir / "report.md"]:
        click.echo(f"wrote {p}")


@cli.command("gate")
@click.argument("run_dirs", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--baseline", "baseline_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Baseline directory: baseline.json (the settings) and bits*/report.json.  [default: reports/baselines/gemma3-270m]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/gate"), show_default=True,
              help="Where the rebuilt run directories, gate.md, gate.json and the chart go.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.02, show_default=True,
              help="Largest accepted relative increase of PPL, mean KLD and file size over the baseline (p99 KLD is shown, not gated: it is too noisy at the gate's length).")
@click.option("--write-baseline", is_flag=True, help="Make the builds' reports the new baseline (commit them) instead of comparing.")
def gate_cmd(run_dirs: tuple[Path, ...], baseline_dir: Path | None, out_dir: Path, tolerance: float, write_baseline: bool) -> None:
    """CI gate: rebuild the baseline's builds and fail (exit 1) on any regression.

    With no RUN_DIR, runs `quantkit compress` with the settings recorded in the
    baseline's baseline.json once per build into --out, then compares each build's
    PPL, mean KLD and file size with its baseline (p99 KLD is shown, not gated). With RUN_DIR..., compares
    those run directories instead, each with the baseline build of the same name
    (bits2, bits3, bits4, bits8). Prints the table and one line per regression,
    writes gate.md, gate.json and the chart (new beside baseline) into --out.
    """
    from quantkit.reports import gate

    base_dir = baseline_dir or gate.BASELINE_DIR
    settings = gate.Settings() if write_baseline else gate.Settings.load(base_dir)
    runs = list(run_dirs) or gate.rebuild(settings, out_dir, log=lambda line: click.echo(line, err=True))
    if write_baseline:
        for p in gate.write_baseline(settings, runs, base_dir):
            click.echo(f"wrote {p}")
        return
    _, baseline = gate.load_baseline(base_dir)
    new = gate.load_runs(runs)
    verdict = gate.compare(baseline, new, tolerance)
    paths = gate.write_report(verdict, baseline, new, out_dir)
    click.echo(verdict.table(), nl=False)
    for line in verdict.failures():
        click.echo(f"FAIL {line}")
    click.echo(f"gate {'passed' if verdict.passed else 'FAILED'}: {len(verdict.checks)} checks, "
               f"{len(verdict.failures())} regressions beyond {tolerance * 100:.1f} %; {paths[0]}")
    if not verdict.passed:
        sys.exit(1)


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (metadata, tensors, totals, bits per weight).")
@click.option("--all", "show_all", is_flag=True, help="List every tensor (default: the first 40 and the totals).")
def inspect_cmd(path: Path, as_json: bool, show_all: bool) -> None:
    """What is inside a GGUF file, a safetensors build directory or a preset.

    Prints a metadata summary, a table of tensors (type, shape, bytes, bits per
    weight), totals by tensor group (embeddings, PLE, attention, MLP, experts,
    norms) and the whole file's bits per weight; for a text GGUF with an mmproj
    (the vision/audio towers) beside it, that file's size and the on-device total.
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
    w = max([48, *(len(t.name) + 1 for t in rows)])
    tw = max([8, *(len(t.type) for t in rows)])
    click.echo(f"\n{'tensor':<{w}}{'type':>{tw}}  {'shape':<22}{'bytes':>14}{'bpw':>8}")
    for t in rows:
        bpw = f"{8 * t.nbytes / t.n_params:.3f}" if t.n_params else "-"
        click.echo(f"{t.name:<{w}}{t.type:>{tw}}  {'x'.join(map(str, t.shape)):<22}{t.nbytes:>14,}{bpw:>8}")
    if len(rows) < len(inv.tensors):
        click.echo(f"... {len(inv.tensors) - len(rows)} more (--all lists them)")
    click.echo(f"\n{'group':<12}{'params':>16}{'bytes':>16}{'bpw':>8}")
    for g, t in inv.totals().items():
        click.echo(f"{g:<12}{t['params']:>16,}{t['bytes']:>16,}{t['bpw'] or 0:>8.3f}")
    tensor_bytes = sum(t.nbytes for t in inv.tensors)
    click.echo(f"{'tensors':<12}{inv.n_params:>16,}{tensor_bytes:>16,}{8 * tensor_bytes / max(inv.n_params, 1):>8.3f}")
    click.echo(f"{'file':<12}{'':>16}{inv.file_bytes:>16,}   (header and padding {inv.file_bytes - tensor_bytes:,} bytes)")
    if inv.mmproj:
        from quantkit.towers import on_device

        m = inv.mmproj
        click.echo(f"\nmmproj beside it: {Path(m['path']).name} ({m['tensors']} tensors, {m['file_bytes']:,} bytes)")
        click.echo(on_device(inv.file_bytes, m["file_bytes"], budgeted=False))


def main() -> None:
    from quantkit import interrupt, malloc

    malloc.one_arena()
    debug = "--debug" in sys.argv[1:]
    try:
        # in a worker thread, so that Ctrl-C and SIGTERM are heard during long native calls (quantkit.interrupt)
        interrupt.run(lambda: cli.main(standalone_mode=False), on_exit=lambda: click.echo("interrupted", err=True))
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
    except OSError as e:  # reading or writing outside the inputs' control: an unwritable --out, a full disk
        if debug:
            traceback.print_exc()
        click.echo(f"error: {e.filename}: {e.strerror}" if e.filename and e.strerror else f"error: {e}", err=True)
        sys.exit(IOFailure.exit_code)
    except Exception as e:  # internal error: one line unless --debug
        if debug:
            traceback.print_exc()
        else:
            click.echo(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
        sys.exit(1)

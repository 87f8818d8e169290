"""`quantkit compress`: from full-precision weights to a build and its report, as a sequence of named stages.

    resolve     the source (quantkit.sources), its tensor table (quantkit.tensor_table), the options and the
                output paths (quantkit.options)
    plan        a type for every tensor (quantkit.plan: uniform, llama.cpp's presets, or the byte budget)
    check       calibrated runs: every weight read once, a NaN or Inf named before any forward pass
                (TensorSource.check_finite)
    importance  budget builds and --method imatrix: E[x^2] per input column from a calibration pass, and for
                budgets each tensor's error at every candidate type (quantkit.sensitivity); the budget's plan
                is made from those errors
    quantize    gptq: block by block, into the work folder (quantkit.sequential); rtn / imatrix (and GPTQ's
                lookup tables): by the writer as it streams
    write       formats.gguf_model (or formats.safetensors_model), atomically
    report      evaluate the build against the source and write report.json / report.md / charts
                (quantkit.build_report)

The work folder OUT/work (quantkit.workdir) holds what an interrupted run needs to go on (`--resume`). A run
stopped by an interrupt (Ctrl-C, SIGTERM; or killed outright) keeps it; one that fails (bad input, a full disk, an
internal error) removes it and so gives its disk space back.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from quantkit import malloc, plan as plans, sensitivity, sequential, towers
from quantkit.calibration import imatrix as imatrix_file
from quantkit.calibration.capture import calibration_ids, capture
from quantkit.errors import BadOption
from quantkit.formats import gguf_model, gguf_writer, names, pack_quantized, safetensors_model
from quantkit.formats.atomic import atomic_write
from quantkit.formats.mmproj import MmprojPlan
from quantkit.formats.source import TensorSource
from quantkit.gptq import METHODS
from quantkit.kernels import registry
from quantkit.options import CompressOptions, build_path
from quantkit.overrides import apply as apply_overrides
from quantkit.reports.metrics import EvalResult
from quantkit.workdir import WorkDir, fingerprint

SEQ_LEN = 512  # calibration sequence length
BUDGET_PRECAPTURE_SEQS = 32  # with --method gptq, the budget's importance comes from this many sequences


@dataclass
class CompressResult:
    plan: plans.Plan
    path: Path | None = None
    file_bytes: int = 0
    seconds: dict = field(default_factory=dict)
    resumed: str | None = None  # what an interrupted run had done ("plan, embedding and blocks 0-6 of 18")
    evaluation: EvalResult | None = None
    mmproj: MmprojPlan | None = None  # the towers' file beside the text build
    mmproj_path: Path | None = None
    mmproj_bytes: int = 0


def compress(source: TensorSource, out_dir: Path, opts: CompressOptions, resume: bool = False,
             threads: int | None = None, log: Callable[[str], None] = lambda line: None) -> CompressResult:
    """The whole command: build, save plan.json, write the towers' mmproj, evaluate and report (when
    opts.eval_tokens); `log` gets the lines a user sees as the stages finish."""
    mm, no_mm = towers.plan(source, opts)  # before any heavy work: a checkpoint that cannot have one fails now
    if opts.format == "safetensors":
        if resume:
            raise BadOption("--resume is for GGUF builds")
        result = run_safetensors(source, out_dir, opts)
    else:
        result = run(source, out_dir, opts, resume)
    result.mmproj = mm
    if result.resumed:
        log(f"resumed {out_dir / 'work'}: the interrupted run had done its {result.resumed}")
    log(result.plan.summary())
    if opts.overrides and opts.format == "gguf":
        for flag, hits in apply_overrides(opts.overrides, source.table).matched.items():
            log(f"{flag}: {len(hits)} tensors ({', '.join(hits[:4])}{', ...' if len(hits) > 4 else ''})")
    if no_mm or mm:
        log(no_mm or mm.summary())
    if opts.dry_run:
        if mm:
            log(towers.on_device(text_file_bytes(source, result.plan, opts), towers.file_bytes(mm), opts.budgeted))
        return result
    atomic_write(out_dir / "plan.json", result.plan.to_json())
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items() if k != "total")
    log(f"wrote {result.path} ({result.file_bytes:,} bytes) in {result.seconds['total']:.0f} s ({stages})")
    if mm:
        result.mmproj_path, seconds = towers.write(source, out_dir, mm, opts)
        result.mmproj_bytes = result.mmproj_path.stat().st_size
        log(f"wrote {result.mmproj_path} ({result.mmproj_bytes:,} bytes) in {seconds:.0f} s")
        log(towers.on_device(result.file_bytes, result.mmproj_bytes, opts.budgeted))
    if opts.eval_tokens:
        from quantkit.build_report import report_build
        from quantkit.sources import open_source

        # a safetensors build reads back through formats.compressed_source and runs in quantkit's forward
        name = f"quantkit {opts.recipe().rsplit(' --method ', 1)[0]} {opts.method}"
        result.evaluation = report_build(source, open_source(str(result.path)), result.plan, name,
                                         result.file_bytes, out_dir, opts.text, opts.eval_tokens, opts.judge, threads,
                                         mmproj_bytes=result.mmproj_bytes or None, progress=opts.progress)
    return result


# ---------------------------------------------------------------- GGUF builds


def run(source: TensorSource, out_dir: Path, opts: CompressOptions, resume: bool = False) -> CompressResult:
    """Build OUT_DIR/MODEL-LABEL.gguf; with `resume`, continue the interrupted run in OUT_DIR/work."""
    t0 = time.perf_counter()
    _check(opts)
    # before any heavy work and before the work folder: the options' plan (--type, --like), or for a budget its
    # size and forced types (its plan needs the measured errors)
    plan = None if opts.budgeted else make_plan(source, opts)
    if opts.imatrix_file:
        _imatrix(source, opts)
    if opts.budgeted:
        b = _budget(source, opts)
        plans.pinned(source.table, b.nbytes, _forced(source.table, opts), b.align)
    if opts.dry_run:  # data-free: a budget's plan uses the prior error estimate
        return CompressResult(plan or make_plan(source, opts))
    t = time.perf_counter()
    checked = opts.calibrated or opts.budgeted  # rtn writes read each tensor once and check it then
    if checked:
        source.check_finite(opts.progress)
    scan = {"check": time.perf_counter() - t} if checked else {}
    work = WorkDir.open(out_dir / "work", fingerprint(source.path, asdict(opts)), resume)
    try:
        with malloc.reuse_large_blocks():
            result = _build(source, out_dir, opts, work, plan)
        result.seconds = {**scan, **result.seconds}
    except Exception:  # a failure, not an interrupt (KeyboardInterrupt): nothing to resume
        work.remove()
        raise
    work.remove()
    result.seconds["total"] = time.perf_counter() - t0
    return result


def _check(opts: CompressOptions) -> None:
    opts.mode()
    if opts.method not in METHODS:
        raise BadOption(f"--method {opts.method}: expected one of {', '.join(METHODS)}")
    if opts.imatrix_file and opts.method == "rtn":
        raise BadOption("--imatrix: --method rtn uses no importance; give --method imatrix or gptq")


def _build(source: TensorSource, out_dir: Path, opts: CompressOptions, work: WorkDir,
           plan: plans.Plan | None) -> CompressResult:
    done: list[str] = []  # what an interrupted run in `work` had done
    seconds: dict[str, float] = {}
    ids = _calibration_ids(source, opts)
    saved = work.load_plan(source.table)
    if saved:
        plan, importance = saved
        done.append("plan")
    else:
        plan, importance = _plan_with_data(source, opts, ids, plan, seconds)
        work.save_plan(plan, importance)
    if opts.method == "gptq":
        t = time.perf_counter()
        tables = _gptq(source, plan, ids, work, opts, done)
        # the lookup tables' importance from the capture, unless --imatrix's file has them
        importance = {**importance, **tables} if not opts.imatrix_file else {**tables, **importance}
        seconds["calibrate+gptq"] = time.perf_counter() - t
    elif opts.method == "rtn":
        importance = {}
    # rtn / imatrix tensors (and GPTQ's lookup tables) are quantized by the writer as it streams
    importance = {n: v for n, v in importance.items() if plan.types.get(n, "F32") not in registry.FLOATS}
    t = time.perf_counter()
    path = build_path(source, out_dir, opts)
    gguf_model.write_gguf(source, path, plan.types, importance=importance, encoded=work.load_tensor,
                          provenance=opts.provenance(), progress=opts.progress, effort=opts.effort)
    seconds["write"] = time.perf_counter() - t
    return CompressResult(plan, path, path.stat().st_size, seconds, ", ".join(done) or None)


def _calibration_ids(source: TensorSource, opts: CompressOptions) -> np.ndarray | None:
    """The calibration set, where a stage needs one: GPTQ's Hessians, and the importance unless --imatrix gives it."""
    if opts.method != "gptq" and (opts.imatrix_file or not (opts.calibrated or opts.budgeted)):
        return None
    return calibration_ids(source.tokenizer(), opts.calib, max(1, opts.calib_tokens // SEQ_LEN), SEQ_LEN)


def _plan_with_data(source: TensorSource, opts: CompressOptions, ids: np.ndarray | None, plan: plans.Plan | None,
                    seconds: dict[str, float]) -> tuple[plans.Plan, dict[str, np.ndarray]]:
    """The importance stage where a build needs data: --method imatrix (the importance for `plan`) and budget
    builds (`plan` None: the importance, then each tensor's errors, from which the budget's plan is made). The
    importance is --imatrix's file, else quantkit's pre-capture."""
    if not (opts.budgeted or opts.method == "imatrix") or not (ids is not None or opts.imatrix_file):
        return plan, {}
    t = time.perf_counter()
    if opts.imatrix_file:
        importance = {n: st.mean_x2() for n, st in _imatrix(source, opts).items()}
    else:
        pre_ids = ids[:BUDGET_PRECAPTURE_SEQS] if opts.method == "gptq" else ids
        importance = sensitivity.precapture(source, pre_ids, opts.progress)
    seconds["capture"] = time.perf_counter() - t
    if plan is not None:
        return plan, importance
    t = time.perf_counter()
    error = sensitivity.relative_errors(source, importance, opts.calibrated, opts.progress, opts.effort)
    plan = make_plan(source, opts, error)
    seconds["sensitivity"] = time.perf_counter() - t
    return plan, importance


def _imatrix(source: TensorSource, opts: CompressOptions) -> dict:
    """--imatrix's entries (calibration.imatrix.LinearStats by canonical name), checked against the model."""
    path = Path(opts.imatrix_file)
    return imatrix_file.for_model(imatrix_file.read_imatrix(path), source.table, path)


def _gptq(source, plan, ids, work: WorkDir, opts: CompressOptions, done: list[str]) -> dict[str, np.ndarray]:
    """The quantize stage for --method gptq, continuing what the work folder holds."""
    tables = work.load_tables()
    if tables is not None:
        done.append("calibration of every block")
        return tables
    start = work.load_checkpoint(opts.device)
    if start is not None:
        blocks = f" and blocks 0-{start.stage} of {source.spec.n_layers}" if start.stage >= 0 else ""
        done.append("embedding" + blocks)
    return sequential.gptq_ggml(source, plan, ids, work, opts.device, opts.progress, opts.effort, start)


def make_plan(source: TensorSource, opts: CompressOptions, error: plans.ErrorFn | None = None) -> plans.Plan:
    """The plan stage: a type for every tensor of the source's table. Budgets use `error` (None: the data-free
    prior, for --dry-run)."""
    table = source.table
    mode = opts.mode()
    forced = _forced(table, opts)
    if mode == "type_name":
        p = plans.uniform(table, opts.type_name)
    elif mode == "like":
        p = plans.like(source.spec, table, opts.like, has_imatrix=opts.calibrated, forced=forced)
    elif mode == "recipe_file":
        p = plans.recipe(Path(opts.recipe_file), table)
    else:
        b = _budget(source, opts)
        return plans.budget(table, b.nbytes, error, with_data=opts.calibrated, forced=forced, mode=b.label,
                            align=b.align, exact=b.exact)
    if forced:
        flags = ([f"--ple-type {opts.ple_type}"] if opts.ple_type else []) + opts.overrides.label()
        p = plans.from_types(table, {**p.types, **forced}, " ".join([p.mode, *flags]))
    return p


def _forced(table, opts: CompressOptions) -> dict[str, str]:
    """The types the user pins: --ple-type, then the llama-quantize style overrides (quantkit.overrides)."""
    forced = {}
    if opts.ple_type:
        forced = {n: opts.ple_type for n in plans.LOOKUP_TABLES[1:] if n in table}
        if not forced:
            raise BadOption("--ple-type: this model has no Per-Layer Embedding table")
    if opts.overrides:
        forced.update(apply_overrides(opts.overrides, table).types)
    return forced


@dataclass(frozen=True)
class Budget:
    nbytes: int  # tensor bytes the plan may spend
    label: str  # the plan's mode line
    align: int  # each tensor counted padded to this (a file budget: GGUF's alignment)
    exact: bool  # the allocator exact to the byte (a file budget, where one byte can decide a type)


def _budget(source: TensorSource, opts: CompressOptions) -> Budget:
    """What a --bits / --max-size build may spend. --max-size counts the file: its header exactly, and the tensors
    with the padding GGUF puts after each, to the byte. --bits is a nominal size (B + 0.5 bpw) where no byte is
    special: its plans keep the allocator's 200,000-step resolution, which the CI gate's baselines were made with
    (with the exact one the 270M's --bits 3 mean KLD rose 4.7 %, though its estimated error can only fall)."""
    if opts.bits is not None:
        return Budget(plans.bits_budget(source.table, opts.bits), f"--bits {opts.bits}", 1, False)
    overhead = header_overhead(source, opts.provenance())
    if opts.max_size <= overhead:
        raise BadOption(f"--max-size {opts.max_size:,} bytes does not even hold the header, metadata and "
                        f"tokenizer ({overhead:,} bytes)")
    return Budget(opts.max_size - overhead, f"--max-size {opts.max_size:,}", gguf_writer.DEFAULT_ALIGNMENT, True)


def text_file_bytes(source: TensorSource, plan: plans.Plan, opts: CompressOptions) -> int:
    """The exact size of the GGUF file `plan` makes (what --dry-run reports before anything is written)."""
    planned = gguf_model.plan_gguf(source, plan.types)
    meta = gguf_model.gguf_metadata(source, planned, opts.provenance())
    return gguf_writer.layout(meta, [p.entry for p in planned])[2]


def header_overhead(source: TensorSource, provenance: dict) -> int:
    """Bytes of a GGUF build before its tensor data: header, metadata and tokenizer, padded (the same for every
    plan: a tensor's type is a fixed-size field)."""
    planned = gguf_model.plan_gguf(source, {})
    header, _, _ = gguf_writer.layout(gguf_model.gguf_metadata(source, planned, provenance), [p.entry for p in planned])
    return len(header)


# ---------------------------------------------------------------- safetensors (compressed-tensors) builds


def run_safetensors(source: TensorSource, out_dir: Path, opts: CompressOptions,
                    shard_bytes: int = safetensors_model.DEFAULT_SHARD_BYTES) -> CompressResult:
    """`quantkit compress --format safetensors`: every Linear weight of the text decoder at `--bits` in
    compressed-tensors' pack-quantized int format (group size as the rows allow, formats.safetensors_model.fit_group),
    quantized with rtn, imatrix or GPTQ; everything else copied in the source dtype. The build directory is
    out_dir/<model>-<scheme>-<method>/."""
    t0 = time.perf_counter()
    if opts.mode() != "bits" or opts.ple_type or opts.overrides:
        raise BadOption("--format safetensors takes --bits (2, 4 or 8), not --type, --max-size, --like, --recipe, "
                        "--ple-type or the type overrides")
    if opts.imatrix_file:
        raise BadOption("--imatrix is for GGUF builds")
    if opts.bits not in pack_quantized.BITS:
        raise BadOption(f"--format safetensors --bits {opts.bits}: expected one of "
                        f"{', '.join(map(str, pack_quantized.BITS))}")
    _check(opts)
    schemes = safetensors_model.uniform_schemes(source, opts.bits, opts.group_size, opts.symmetric)
    planned = safetensors_model.plan_safetensors(source, schemes)
    scheme = pack_quantized.IntScheme(opts.bits, opts.group_size, opts.symmetric)
    result = CompressResult(_safetensors_plan(planned, f"safetensors {scheme.label}"))
    if opts.dry_run:
        return result
    importance: dict[str, np.ndarray] = {}
    work = WorkDir(out_dir / "work")
    encoded = None
    if opts.calibrated:
        t = time.perf_counter()
        source.check_finite(opts.progress)
        result.seconds["check"] = time.perf_counter() - t
        t = time.perf_counter()
        ids = _calibration_ids(source, opts)
        if opts.method == "imatrix":
            pre = capture(source.spec, source, ids, progress=opts.progress)
            importance = {n: s.mean_x2() for n, s in pre.stats.items() if n in schemes}
            result.seconds["capture"] = time.perf_counter() - t
        else:
            work.path.mkdir(parents=True, exist_ok=True)
            sequential.gptq_int(source, schemes, ids, work, opts.device, opts.progress)
            encoded = work.load_group
            result.seconds["calibrate+gptq"] = time.perf_counter() - t
    t = time.perf_counter()
    path = build_path(source, out_dir, opts)
    safetensors_model.write_safetensors(source, path, schemes, importance=importance, provenance=opts.provenance(),
                                        progress=opts.progress, encoded=encoded, shard_bytes=shard_bytes)
    result.seconds["write"] = time.perf_counter() - t
    work.remove()
    result.path = path
    result.file_bytes = sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".safetensors")
    result.seconds["total"] = time.perf_counter() - t0
    return result


def _safetensors_plan(planned, mode: str) -> plans.Plan:
    """The build as a plans.Plan (for its summary and plan.json): type = the scheme label or the stored dtype."""
    tensors = {}
    for p in planned:
        name = p.canonical or p.file_name.removeprefix("model.")
        tensors[name] = plans.PlannedTensor(name, p.shape, p.scheme.label if p.scheme else p.dtype, p.nbytes,
                                            names.group_of(name))
    return plans.Plan(mode, tensors)

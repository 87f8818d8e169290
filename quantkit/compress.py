"""`quantkit compress`: from full-precision weights to a GGUF build and its report.

    source --> plan (types per tensor, from headers only) --> calibration (streaming capture)
           --> quantize (rtn / imatrix / gptq, block by block) --> GGUF writer --> eval --> report

With `--bits` or `--max-size` the plan comes from the byte-budget allocator: a short
calibration pass measures every tensor's importance-weighted error at every candidate
type on a sample of its rows, relative to the tensor's own output energy (Gemma
normalises every projection's output: q/k/v norms, post-attention and post-FFN norms,
so a projection's *relative* output error is what the rest of the network sees).
The quantized tensors are kept in the run's work folder until the writer streams them.

Resume: the work folder OUT/work also holds what an interrupted run needs to go on (`run(..., resume=True)`,
`quantkit compress --resume`), each file written to a temporary name and renamed, so a kill at any moment leaves
the previous state valid:

    run.json        the run's fingerprint: quantkit version, source files (sizes, mtimes), options, torch's
                    thread count (the CPU forward's sums, hence the bytes, depend on it)
    plan.json       the plan, and importance.npz: the pre-capture importance (budget builds, imatrix)
    capture.pt      the GPTQ capture after its last completed stage (calibration states, KV for sharing, the
                    accumulators that span stages); ple.pt the per-layer inputs, fixed after the embedding
    tables.npz      the lookup tables' importance, once the capture is complete (capture.pt is then dropped)
    NAME.npy        every tensor quantized so far

A resumed run gives the same bytes as one that never stopped. A work folder from an earlier run is never reused
silently: without --resume the run refuses to start (pass --resume or remove the folder); with --resume and a
different source, options, thread count or quantkit version it refuses too. A run stopped by an interrupt (Ctrl-C,
SIGTERM; or killed outright) keeps the folder; one that fails (bad input, a full disk, an internal error) removes it
and so gives its disk space back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from quantkit import __version__, plan as plans
from quantkit.calibration.capture import Checkpoint, capture, calibration_ids
from quantkit.calibration.embed_importance import table_importance
from quantkit.errors import BadOption
from quantkit.formats import gguf_model, gguf_writer, safetensors_model
from quantkit.formats.source import TensorSource
from quantkit.gptq import METHODS, quantize_group_tensor, quantize_tensor
from quantkit.kernels import fixed, group, registry

ERROR_SAMPLE_VALUES = 1 << 17  # per tensor: at least 8 rows, evenly spaced, about this many weights
FLOATS = ("F32", "F16", "BF16")


@dataclass
class CompressOptions:
    type_name: str | None = None
    bits: int | None = None
    max_size: int | None = None
    like: str | None = None
    ple_type: str | None = None
    method: str = "gptq"
    calib: str = "c4"
    calib_tokens: int = 128 * 512
    text: str = "wiki"
    eval_tokens: int = 8192
    dry_run: bool = False
    device: str = "cpu"
    progress: bool = True

    def mode(self) -> str:
        given = [k for k in ("type_name", "bits", "max_size", "like") if getattr(self, k) is not None]
        if len(given) != 1:
            raise BadOption("give exactly one of --type, --bits, --max-size, --like")
        return given[0]


@dataclass
class CompressResult:
    plan: plans.Plan
    path: Path | None = None
    file_bytes: int = 0
    seconds: dict = field(default_factory=dict)
    resumed: str | None = None  # what an interrupted run had done ("plan, embedding and blocks 0-6 of 18")


def header_overhead(source: TensorSource, provenance: dict) -> int:
    """Bytes of a GGUF build that are not tensor data: header, metadata, tokenizer and the
    alignment padding (at most alignment-1 per tensor, counted in full)."""
    planned = gguf_model.plan_gguf(source, {})
    header, _, _ = gguf_writer.layout(gguf_model.gguf_metadata(source, planned, provenance), [p.entry for p in planned])
    return len(header) + gguf_writer.DEFAULT_ALIGNMENT * len(planned)


def make_plan(source: TensorSource, opts: CompressOptions, provenance: dict, error=None) -> plans.Plan:
    mode = opts.mode()
    infos = gguf_infos(source)
    forced = {}
    if opts.ple_type:
        forced = {n: opts.ple_type for n in plans.LOOKUP_TABLES[1:] if n in infos}
        if not forced:
            raise BadOption("--ple-type: this model has no Per-Layer Embedding table")
    if mode == "type_name":
        p = plans.uniform(infos, opts.type_name)
    elif mode == "like":
        p = plans.like(source.spec, infos, opts.like, has_imatrix=opts.method != "rtn")
    else:
        if mode == "bits":
            if opts.bits not in plans.UNIFORM_BITS:
                raise BadOption(f"--bits {opts.bits}: expected one of {', '.join(map(str, plans.UNIFORM_BITS))}")
            budget = plans.bits_budget(infos, opts.bits)
            label = f"--bits {opts.bits}"
        else:
            overhead = header_overhead(source, provenance)
            if opts.max_size <= overhead:
                raise BadOption(f"--max-size {opts.max_size:,} bytes does not even hold the header, metadata and "
                                f"tokenizer ({overhead:,} bytes)")
            budget = opts.max_size - overhead
            label = f"--max-size {opts.max_size:,}"
        return plans.budget(infos, budget, error, with_data=opts.method != "rtn", forced=forced, mode=label)
    if forced:
        p = plans.from_types(infos, {**p.types, **forced}, p.mode + f" --ple-type {opts.ple_type}")
    return p


def gguf_infos(source: TensorSource):
    """The source's tensors with the shapes they get in the GGUF (the embedding's OOV rows trimmed)."""
    from dataclasses import replace

    planned = {p.canonical: p for p in gguf_model.plan_gguf(source, {}) if p.canonical}
    return {n: replace(i, shape=planned[n].entry.shape) for n, i in source.infos.items()}


def relative_errors(source: TensorSource, infos, importance: dict[str, np.ndarray], with_data: bool, progress: bool,
                    effort: str = "exact"):
    """error(name, type) = sum_j I_j ||dW[:, j]||^2 / sum_j I_j ||W[:, j]||^2 on a sample of rows."""
    table = {}
    names = [n for n, i in infos.items() if plans.fixed_type(n, i.shape) is None]
    for n in tqdm(names, desc="sensitivity", unit="tensor", disable=not progress, leave=False):
        shape = infos[n].shape
        n_rows = int(np.prod(shape[:-1]))
        take = np.linspace(0, n_rows - 1, min(max(8, ERROR_SAMPLE_VALUES // shape[-1]), n_rows)).astype(np.int64)
        if len(shape) == 2:  # read only the sampled rows (the PLE table is never loaded whole)
            sample = source.take(n, take)
        else:
            sample = source.get(n).reshape(n_rows, shape[-1])[take]
        sample = np.ascontiguousarray(sample)
        imp = importance.get(n)
        if imp is not None and imp.ndim == 2:  # experts: average their importance
            imp = imp.mean(0)
        i_w = imp if imp is not None else np.ones(sample.shape[1], np.float32)
        energy = float((sample.astype(np.float64) ** 2 * i_w).sum()) or 1.0
        for t in plans.candidates(n, sample.shape[1], with_data):
            data = registry.quantize(t, sample, imp, name=n, effort=effort)
            d = registry.dequantize(t, data, sample.shape).astype(np.float64) - sample
            table[n, t] = float((d**2 * i_w).sum()) / energy
    return lambda name, t: table[name, t]


def run(source: TensorSource, out_dir: Path, opts: CompressOptions, resume: bool = False) -> CompressResult:
    """Build OUT_DIR/MODEL-RECIPE.gguf; with `resume`, continue the interrupted run in OUT_DIR/work."""
    t0 = time.perf_counter()
    opts.mode()
    if opts.method not in METHODS:
        raise BadOption(f"--method {opts.method}: expected one of {', '.join(METHODS)}")
    provenance = {"recipe": _recipe(opts), "calibration": "none" if opts.method == "rtn" else f"{opts.calib}:{opts.calib_tokens}",
                  "imatrix": "none" if opts.method == "rtn" else "quantkit capture (E[x^2] per input column)"}
    budgeted = opts.mode() in ("bits", "max_size")
    # --like / --type reproduce llama.cpp's bytes (rtn, imatrix); budget builds are quantkit's own, and take the
    # IQ2/IQ3 grid types' short scale search: 3-10x faster for 1-2% more error (kernels/iquants.SCALE_TRIALS)
    effort = "fast" if budgeted else "exact"
    plan = make_plan(source, opts, provenance)  # data-free for budgets: --dry-run shows it
    result = CompressResult(plan)
    if opts.dry_run:
        return result
    work = out_dir / "work"
    _open_work(work, _fingerprint(source, opts), resume)
    try:
        return _build(source, out_dir, opts, work, provenance, effort, result, t0)
    except Exception:  # a failure, not an interrupt (KeyboardInterrupt): nothing to resume
        shutil.rmtree(work, ignore_errors=True)
        raise


def _build(source, out_dir, opts, work, provenance, effort, result, t0) -> CompressResult:
    budgeted = opts.mode() in ("bits", "max_size")
    plan = result.plan
    tok = source.tokenizer()
    seq_len = 512
    n_seqs = max(1, opts.calib_tokens // seq_len)
    ids = calibration_ids(tok, opts.calib, n_seqs, seq_len) if opts.method != "rtn" or budgeted else None
    infos = gguf_infos(source)
    done = []  # what an interrupted run in `work` had done
    importance: dict[str, np.ndarray] = {}
    if (work / "plan.json").exists():
        plan = result.plan = _load_plan(work / "plan.json", infos)
        importance = _load_arrays(work / "importance.npz")
        done.append("plan")
    elif ids is not None and (budgeted or opts.method == "imatrix"):
        t = time.perf_counter()
        pre = capture(source.spec, source, ids[: min(len(ids), 32)] if opts.method == "gptq" else ids,
                      progress=opts.progress)
        importance = {n: s.mean_x2() for n, s in pre.stats.items() if n in infos}
        importance.update(table_importance(source.spec, pre, source))
        result.seconds["capture"] = time.perf_counter() - t
        if budgeted:
            t = time.perf_counter()
            err = relative_errors(source, infos, importance, opts.method != "rtn", opts.progress, effort)
            plan = result.plan = make_plan(source, opts, provenance, err)
            result.seconds["sensitivity"] = time.perf_counter() - t
    if not done:  # importance first: plan.json's presence says both are there
        _save_arrays(work / "importance.npz", importance)
        _atomic(work / "plan.json", lambda f: f.write(json.dumps(
            {"mode": plan.mode, "budget": plan.budget, "types": plan.types}, indent=1).encode()))
    if opts.method == "gptq":
        t = time.perf_counter()
        if (work / "tables.npz").exists():
            tables = _load_arrays(work / "tables.npz")
            done.append("calibration of every block")
        else:
            start = _load_checkpoint(work, opts.device)
            if start is not None:
                L = source.spec.n_layers
                done.append("embedding" + (f" and blocks 0-{start.stage} of {L}" if start.stage >= 0 else ""))
            tables = _quantize_sequential(source, plan, ids, work, opts, effort, start)
        importance.update(tables)
        result.seconds["calibrate+gptq"] = time.perf_counter() - t
    elif opts.method == "rtn":
        importance = {}
    # rtn / imatrix tensors (and GPTQ's lookup tables) are quantized by the writer as it streams
    importance = {n: v for n, v in importance.items() if n in plan.types and plan.types[n] not in FLOATS}
    t = time.perf_counter()
    path = out_dir / f"{_stem(source)}-{_recipe(opts).replace(' ', '').replace('--', '-').strip('-')}.gguf"
    gguf_model.write_gguf(source, path, plan.types, importance=importance, encoded=lambda name: _load(work, name),
                          provenance=provenance, progress=opts.progress, effort=effort)
    result.seconds["write"] = time.perf_counter() - t
    shutil.rmtree(work)
    result.resumed = ", ".join(done) if done else None
    result.path = path
    result.file_bytes = path.stat().st_size
    result.seconds["total"] = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------- the work folder (resume)

# options whose flag is not "--" + the field name with dashes
OPTION_FLAGS = {"type_name": "--type", "eval_tokens": "--tokens"}


def _fingerprint(source: TensorSource, opts: CompressOptions) -> dict:
    """What a resumed run must share with the interrupted one: quantkit's version, the source's files (and the
    calibration text file's) with their sizes and modification times, every option, and torch's thread count
    (a run is byte-for-byte repeatable at a fixed count; batched matmuls split their sums by thread)."""
    files = {"source": _file_stats(Path(source.path))}
    if Path(opts.calib).is_file():
        files["calib"] = _file_stats(Path(opts.calib))
    options = {k: v for k, v in asdict(opts).items() if k not in ("progress", "dry_run")}
    return json.loads(json.dumps({"quantkit": __version__, "source": str(Path(source.path).resolve()),
                                  "files": files, "options": options, "threads": torch.get_num_threads()}))


def _file_stats(path: Path) -> dict[str, list[int]]:
    """name -> [size, mtime in ns] of a file, or of every file directly in a directory."""
    paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return {str(p.resolve()): [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}


def _open_work(work: Path, fingerprint: dict, resume: bool) -> None:
    """Create the work folder for a new run, or check that the one there belongs to this run (resume)."""
    record = work / "run.json"
    if not resume:
        if work.exists():
            raise BadOption(f"{work} holds an interrupted compress: pass --resume to continue it, or remove the "
                            "folder to start over")
        work.mkdir(parents=True)
        try:
            _atomic(record, lambda f: f.write(json.dumps(fingerprint, indent=1).encode()))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return
    if not record.is_file():
        raise BadOption(f"--resume: nothing to resume in {work.parent} (no {work.name}/{record.name}: no interrupted "
                        "compress there)")
    try:
        old = json.loads(record.read_text())
    except (OSError, ValueError) as e:
        raise BadOption(f"--resume: {record} is unreadable ({e}); remove {work} to start over") from None
    diffs = _differences(old, fingerprint)
    if diffs:
        raise BadOption(f"--resume: {work} was made by another run ({'; '.join(diffs)}); run the interrupted "
                        f"command again with --resume, or remove {work} to start over")


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("quantkit") != new["quantkit"]:
        out.append(f"quantkit {old.get('quantkit')} there, {new['quantkit']} now")
    if old.get("source") != new["source"]:
        out.append(f"source {old.get('source')} there, {new['source']} now")
    else:
        for what, files in new["files"].items():
            was = old.get("files", {}).get(what, {})
            changed = sorted(set(was) ^ set(files) | {n for n in files if was.get(n) != files[n]})
            if changed:
                out.append(f"{what} file {changed[0]} changed since" + (f" (and {len(changed) - 1} more)"
                                                                         if len(changed) > 1 else ""))
    for k, v in {**new["options"], "threads": new["threads"]}.items():
        was = old.get("threads") if k == "threads" else old.get("options", {}).get(k)
        if was != v:
            flag = OPTION_FLAGS.get(k, "--" + k.replace("_", "-"))
            out.append(f"{flag} {'not given' if was is None else was} there, {'not given' if v is None else v} now")
    return out


def _atomic(path: Path, write) -> None:
    """write(f) into a temporary file beside `path`, then rename it over `path`: readers see the old file or the
    new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    _atomic(path, lambda f: np.savez(f, **arrays))


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {n: z[n] for n in z.files}


def _load_plan(path: Path, infos) -> plans.Plan:
    d = json.loads(path.read_text())
    return plans.from_types(infos, d["types"], d["mode"], d["budget"])


def _save_checkpoint(work: Path, ck: Checkpoint) -> None:
    """capture.pt; the per-layer inputs (the bulk of an E-model's states, fixed after the embedding) go to ple.pt
    once."""
    d = ck.to_dict()
    ple = [st.pop("ple") for st in d["states"]]
    if ck.stage == -1:
        _atomic(work / "ple.pt", lambda f: torch.save(ple, f))
    _atomic(work / "capture.pt", lambda f: torch.save(d, f))


def _load_checkpoint(work: Path, device: str) -> Checkpoint | None:
    if not (work / "capture.pt").exists():
        return None
    d = torch.load(work / "capture.pt", map_location=device, weights_only=True)
    ple = torch.load(work / "ple.pt", map_location=device, weights_only=True)
    for st, p in zip(d["states"], ple, strict=True):
        st["ple"] = p
    return Checkpoint.from_dict(d)


def _weights(source: TensorSource, plan: plans.Plan, name: str) -> np.ndarray:
    """The tensor as the build stores it (the embedding's OOV rows trimmed, as the converter does)."""
    w = source.get(name)
    rows = plan.tensors[name].shape[0]
    return w[:rows] if w.shape[0] != rows else w


def _save(work: Path, name: str, data: np.ndarray) -> None:
    tmp = work / f".{name}.npy"
    np.save(tmp, np.ascontiguousarray(data))
    tmp.replace(work / f"{name}.npy")


def _load(work: Path, name: str) -> np.ndarray | None:
    p = work / f"{name}.npy"
    return np.load(p) if p.exists() else None


def _quantize_sequential(source, plan, ids, work, opts, effort, start: Checkpoint | None = None
                         ) -> dict[str, np.ndarray]:
    """GPTQ: each block's weights are quantized from Hessians captured on the outputs of
    the already-quantized blocks before it. Returns the lookup tables' derived importance,
    with which the writer quantizes them. Checkpoints into `work` after every stage; `start`
    continues from one."""
    types = plan.types

    def one(n, st):
        # the tied head (embed_tokens) is quantized below as a lookup table with its own importance
        if n not in types or types[n] in FLOATS or n == "embed_tokens.weight":
            return None
        # IQ2/IQ3 grids have no fixed-scale encoder: those take the importance-weighted search
        method = "gptq" if registry.get(types[n]).name in fixed.SUPPORTED else "imatrix"
        q = quantize_tensor(method, _weights(source, plan, n), types[n], st, effort=effort)
        _save(work, n, q.data)
        return q.values

    def on_stage(i, stats):
        repl = {n: one(n, st) for n, st in stats.items()}
        return {n: v for n, v in repl.items() if v is not None}

    # true-sequential GPTQ: each dense linear is quantized as soon as its input has been seen, in one pass over the
    # calibration set (which then runs as a single batch); expert stacks go through on_stage
    result = capture(source.spec, source, ids, hessian=True, on_stage=on_stage, on_linear=one, device=opts.device,
                     progress=opts.progress, start=start, on_checkpoint=lambda ck: _save_checkpoint(work, ck))
    tables = table_importance(source.spec, result, source)
    _save_arrays(work / "tables.npz", tables)
    for name in ("capture.pt", "ple.pt"):  # the capture is complete: its checkpoint is not needed any more
        (work / name).unlink()
    return tables


def _recipe(opts: CompressOptions) -> str:
    parts = [f"--type {opts.type_name}" if opts.type_name else "", f"--bits {opts.bits}" if opts.bits else "",
             f"--max-size {opts.max_size}" if opts.max_size else "", f"--like {opts.like}" if opts.like else "",
             f"--ple-type {opts.ple_type}" if opts.ple_type else "", f"--method {opts.method}"]
    return " ".join(p for p in parts if p)


def _stem(source: TensorSource) -> str:
    return source.path.stem if source.path.is_file() else source.path.name


def plan_summary(plan: plans.Plan) -> str:
    lines = [f"plan: {plan.mode}", f"{'group':<12}{'params':>16}{'bytes':>16}{'bpw':>8}  types"]
    for g, v in plan.by_group().items():
        types = ", ".join(f"{t}×{c}" for t, c in v["types"].items())
        lines.append(f"{g:<12}{v['params']:>16,}{v['bytes']:>16,}{v['bpw']:>8.3f}  {types}")
    lines.append(f"{'total':<12}{plan.n_params:>16,}{plan.nbytes:>16,}{8 * plan.nbytes / plan.n_params:>8.3f}"
                 + (f"  (budget {plan.budget:,})" if plan.budget else ""))
    return "\n".join(lines)


def save_plan(plan: plans.Plan, path: Path) -> None:
    path.write_text(json.dumps({"mode": plan.mode, "budget": plan.budget,
                                "tensors": {n: asdict(t) for n, t in plan.tensors.items()}}, indent=1))


# ---------------------------------------------------------------- safetensors (compressed-tensors) builds


def run_safetensors(source: TensorSource, out_dir: Path, opts: CompressOptions, group_size: int = 128,
                    symmetric: bool = True, shard_bytes: int = safetensors_model.DEFAULT_SHARD_BYTES) -> CompressResult:
    """`quantkit compress --format safetensors`: every Linear weight of the text decoder at `--bits` in
    compressed-tensors' pack-quantized int format (group size as the rows allow, formats.safetensors_model.fit_group),
    quantized with rtn, imatrix or GPTQ; everything else copied in the source dtype. The build directory is
    out_dir/<model>-<scheme>-<method>/."""
    t0 = time.perf_counter()
    if opts.mode() != "bits" or opts.ple_type:
        raise BadOption("--format safetensors takes --bits (2, 4 or 8), not --type, --max-size, --like or --ple-type")
    if opts.bits not in safetensors_model.BITS:
        raise BadOption(f"--format safetensors --bits {opts.bits}: expected one of "
                        f"{', '.join(map(str, safetensors_model.BITS))}")
    if opts.method not in METHODS:
        raise BadOption(f"--method {opts.method}: expected one of {', '.join(METHODS)}")
    label = safetensors_model.IntScheme(opts.bits, group_size, symmetric).label
    schemes = safetensors_model.uniform_schemes(source, opts.bits, group_size, symmetric)
    planned = safetensors_model.plan_safetensors(source, schemes)
    result = CompressResult(_safetensors_summary(planned, f"safetensors {label}"))
    if opts.dry_run:
        return result
    provenance = {"recipe": f"--format safetensors --bits {opts.bits} --group-size {group_size}"
                            + ("" if symmetric else " --asym") + f" --method {opts.method}",
                  "calibration": "none" if opts.method == "rtn" else f"{opts.calib}:{opts.calib_tokens}",
                  "imatrix": "none" if opts.method == "rtn" else "quantkit capture (E[x^2] per input column)"}
    importance: dict[str, np.ndarray] = {}
    work = out_dir / "work"
    encoded = None
    if opts.method != "rtn":
        t = time.perf_counter()
        ids = calibration_ids(source.tokenizer(), opts.calib, max(1, opts.calib_tokens // 512), 512)
        if opts.method == "imatrix":
            pre = capture(source.spec, source, ids, progress=opts.progress)
            importance = {n: s.mean_x2() for n, s in pre.stats.items() if n in schemes}
            result.seconds["capture"] = time.perf_counter() - t
        else:
            work.mkdir(parents=True, exist_ok=True)
            _group_sequential(source, schemes, ids, work, opts)
            encoded = lambda name: _load_group(work, name)  # noqa: E731
            result.seconds["calibrate+gptq"] = time.perf_counter() - t
    t = time.perf_counter()
    path = out_dir / f"{_stem(source)}-{label}-{opts.method}"
    safetensors_model.write_safetensors(source, path, schemes, importance=importance, provenance=provenance,
                                       progress=opts.progress, encoded=encoded, shard_bytes=shard_bytes)
    result.seconds["write"] = time.perf_counter() - t
    shutil.rmtree(work, ignore_errors=True)
    result.path = path
    result.file_bytes = sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".safetensors")
    result.seconds["total"] = time.perf_counter() - t0
    return result


def _safetensors_summary(planned, mode: str) -> plans.Plan:
    """The build as a plans.Plan (for plan_summary / plan.json): type = the scheme label or the stored dtype."""
    from quantkit.inspect import group_of

    tensors = {}
    for p in planned:
        name = p.canonical or p.file_name.removeprefix("model.")
        tensors[name] = plans.PlannedTensor(name, p.shape, p.scheme.label if p.scheme else p.dtype, p.nbytes,
                                            group_of(name))
    return plans.Plan(mode, tensors)


def _group_sequential(source: TensorSource, schemes, ids, work: Path, opts: CompressOptions) -> None:
    """GPTQ into the int group format, true-sequential as _quantize_sequential: each linear is quantized from the
    Hessian of its input in the already-quantized model, and the model goes on with its dequantized values."""

    def one(n, st):
        s = schemes.get(n)
        if s is None:
            return None
        dtype = safetensors_model.SCALE_DTYPE[source.infos[n].dtype]
        gq = quantize_group_tensor("gptq", source.get(n), s.bits, s.group_size, s.symmetric, st, scale_dtype=dtype)
        _save_group(work, n, gq)
        return group.group_dequantize(gq)

    def on_stage(i, stats):
        repl = {n: one(n, st) for n, st in stats.items()}
        return {n: v for n, v in repl.items() if v is not None}

    capture(source.spec, source, ids, hessian=True, on_stage=on_stage, on_linear=one, device=opts.device,
            progress=opts.progress)


def _save_group(work: Path, name: str, gq: group.GroupQuant) -> None:
    tmp = work / f".{name}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, codes=gq.codes, scales=gq.scales, bits=gq.bits, group_size=gq.group_size,
                 **({} if gq.zero_points is None else {"zero_points": gq.zero_points}))
    tmp.replace(work / f"{name}.npz")


def _load_group(work: Path, name: str) -> group.GroupQuant | None:
    p = work / f"{name}.npz"
    if not p.exists():
        return None
    with np.load(p) as z:
        zps = z["zero_points"] if "zero_points" in z.files else None
        return group.GroupQuant(z["codes"], z["scales"], zps, int(z["bits"]), int(z["group_size"]), zps is None,
                                np.zeros(z["scales"].shape, np.float64))

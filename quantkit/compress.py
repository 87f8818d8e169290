"""`quantkit compress`: from full-precision weights to a GGUF build and its report.

    source --> plan (types per tensor, from headers only) --> calibration (streaming capture)
           --> quantize (rtn / imatrix / gptq, block by block) --> GGUF writer --> eval --> report

With `--bits` or `--max-size` the plan comes from the byte-budget allocator: a short
calibration pass measures every tensor's importance-weighted error at every candidate
type on a sample of its rows, relative to the tensor's own output energy (Gemma
normalises every projection's output: q/k/v norms, post-attention and post-FFN norms,
so a projection's *relative* output error is what the rest of the network sees).
The quantized tensors are kept in the run's work folder until the writer streams them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from quantkit import __version__, plan as plans
from quantkit.calibration.capture import capture, calibration_ids
from quantkit.calibration.embed_importance import table_importance
from quantkit.errors import BadOption
from quantkit.formats import gguf_model, gguf_writer
from quantkit.formats.source import TensorSource
from quantkit.gptq import METHODS, quantize_tensor
from quantkit.kernels import fixed, registry

ERROR_SAMPLE_ROWS = 512
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


def relative_errors(source: TensorSource, infos, importance: dict[str, np.ndarray], with_data: bool, progress: bool):
    """error(name, type) = sum_j I_j ||dW[:, j]||^2 / sum_j I_j ||W[:, j]||^2 on a sample of rows."""
    table = {}
    names = [n for n, i in infos.items() if plans.fixed_type(n, i.shape) is None]
    for n in tqdm(names, desc="sensitivity", unit="tensor", disable=not progress, leave=False):
        w2 = source.get(n).reshape(-1, source.infos[n].shape[-1])
        take = np.linspace(0, w2.shape[0] - 1, min(ERROR_SAMPLE_ROWS, w2.shape[0])).astype(np.int64)
        sample = np.ascontiguousarray(w2[take][:, : infos[n].shape[-1]])
        imp = importance.get(n)
        if imp is not None and imp.ndim == 2:  # experts: average their importance
            imp = imp.mean(0)
        i_w = imp if imp is not None else np.ones(sample.shape[1], np.float32)
        energy = float((sample.astype(np.float64) ** 2 * i_w).sum()) or 1.0
        for t in plans.candidates(n, sample.shape[1], with_data):
            data = registry.quantize(t, sample, imp, name=n)
            d = registry.dequantize(t, data, sample.shape).astype(np.float64) - sample
            table[n, t] = float((d**2 * i_w).sum()) / energy
    return lambda name, t: table[name, t]


def run(source: TensorSource, out_dir: Path, opts: CompressOptions) -> CompressResult:
    t0 = time.perf_counter()
    opts.mode()
    if opts.method not in METHODS:
        raise BadOption(f"--method {opts.method}: expected one of {', '.join(METHODS)}")
    provenance = {"recipe": _recipe(opts), "calibration": "none" if opts.method == "rtn" else f"{opts.calib}:{opts.calib_tokens}",
                  "imatrix": "none" if opts.method == "rtn" else "quantkit capture (E[x^2] per input column)"}
    budgeted = opts.mode() in ("bits", "max_size")
    plan = make_plan(source, opts, provenance)  # data-free for budgets: --dry-run shows it
    result = CompressResult(plan)
    if opts.dry_run:
        return result

    tok = source.tokenizer()
    seq_len = 512
    n_seqs = max(1, opts.calib_tokens // seq_len)
    ids = calibration_ids(tok, opts.calib, n_seqs, seq_len) if opts.method != "rtn" or budgeted else None
    infos = gguf_infos(source)
    importance: dict[str, np.ndarray] = {}
    if ids is not None and (budgeted or opts.method == "imatrix"):
        t = time.perf_counter()
        pre = capture(source.spec, source, ids[: min(len(ids), 32)] if opts.method == "gptq" else ids,
                      progress=opts.progress)
        importance = {n: s.mean_x2() for n, s in pre.stats.items() if n in infos}
        importance.update(table_importance(source.spec, pre, source))
        result.seconds["capture"] = time.perf_counter() - t
        if budgeted:
            err = relative_errors(source, infos, importance, opts.method != "rtn", opts.progress)
            plan = result.plan = make_plan(source, opts, provenance, err)
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    if opts.method == "gptq":
        t = time.perf_counter()
        importance.update(_quantize_sequential(source, plan, ids, work, opts))
        result.seconds["calibrate+gptq"] = time.perf_counter() - t
    elif opts.method == "rtn":
        importance = {}
    # rtn / imatrix tensors (and GPTQ's lookup tables) are quantized by the writer as it streams
    importance = {n: v for n, v in importance.items() if n in plan.types and plan.types[n] not in FLOATS}
    t = time.perf_counter()
    path = out_dir / f"{_stem(source)}-{_recipe(opts).replace(' ', '').replace('--', '-').strip('-')}.gguf"
    gguf_model.write_gguf(source, path, plan.types, importance=importance, encoded=lambda name: _load(work, name),
                          provenance=provenance, progress=opts.progress)
    result.seconds["write"] = time.perf_counter() - t
    shutil.rmtree(work)
    result.path = path
    result.file_bytes = path.stat().st_size
    result.seconds["total"] = time.perf_counter() - t0
    return result


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


def _quantize_sequential(source, plan, ids, work, opts) -> dict[str, np.ndarray]:
    """GPTQ: each block's weights are quantized from Hessians captured on the outputs of
    the already-quantized blocks before it. Returns the lookup tables' derived importance,
    with which the writer quantizes them."""
    types = plan.types

    def one(n, st):
        # the tied head (embed_tokens) is quantized below as a lookup table with its own importance
        if n not in types or types[n] in FLOATS or n == "embed_tokens.weight":
            return None
        # IQ2/IQ3 grids have no fixed-scale encoder: those take the importance-weighted search
        method = "gptq" if registry.get(types[n]).name in fixed.SUPPORTED else "imatrix"
        q = quantize_tensor(method, _weights(source, plan, n), types[n], st)
        _save(work, n, q.data)
        return q.values

    def on_stage(i, stats):
        repl = {n: one(n, st) for n, st in stats.items()}
        return {n: v for n, v in repl.items() if v is not None}

    # true-sequential GPTQ: each dense linear is quantized as soon as its input has been seen, in one pass over the
    # calibration set (which then runs as a single batch); expert stacks go through on_stage
    result = capture(source.spec, source, ids, hessian=True, on_stage=on_stage, on_linear=one, device=opts.device,
                     progress=opts.progress)
    return table_importance(source.spec, result, source)


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

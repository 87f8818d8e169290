"""llama.cpp imatrix files (GGUF flavour), both ways.

Format (tools/imatrix/imatrix.cpp `save_imatrix`, common/imatrix-loader.cpp `common_imatrix_load`):

    general.type        = "imatrix"
    imatrix.datasets    = [str, ...]        dataset names / paths
    imatrix.chunk_count = u32               chunks processed
    imatrix.chunk_size  = u32               tokens per chunk
    <gguf name>.in_sum2   F32, ne = [n_in, n_mat]   sum of x^2 per input column (per expert: n_mat = n_expert)
    <gguf name>.counts    F32, ne = [1, n_mat]      tokens seen (per expert)

Tensors are written in sorted name order. llama-quantize turns an entry into its importance with
E[x^2] = in_sum2 / counts in float32 per matrix, and 1 for a matrix with count 0 (tools/quantize `load_imatrix`);
`importance()` does the same. llama-imatrix records only `blk.*` weights (and `output.weight` with
--process-output), never the tied `token_embd.weight`; `from_stats` follows that unless `include_head`.
`quantkit imatrix` (capture_imatrix) adds the lookup tables' own importance, with a count of 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from quantkit.calibration.capture import HEAD, LinearStats
from quantkit.errors import BadFile, BadOption
from quantkit.formats import names

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


@dataclass
class Imatrix:
    """An imatrix file's content, keyed by GGUF tensor name."""

    sums: dict[str, np.ndarray]  # float32 [n_mat, n_in]
    counts: dict[str, np.ndarray]  # int64 [n_mat] (llama.cpp rounds the stored floats with lround)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def importance(self) -> dict[str, np.ndarray]:
        """canonical name -> E[x^2] float32 ([n_in], or [n_expert, n_in] for expert stacks), as llama-quantize
        computes it. Entries with no canonical counterpart are kept under their GGUF name."""
        out = {}
        for g, s in self.sums.items():
            c = self.counts[g].astype(np.float32)
            e = np.ones_like(s)
            seen = c > 0
            e[seen] = s[seen] / c[seen, None]
            out[names.from_gguf(g) or g] = e[0] if e.shape[0] == 1 else e
        return out

    def stats(self) -> dict[str, LinearStats]:
        """The entries as LinearStats (no Hessian), canonical names."""
        out = {}
        for g, s in self.sums.items():
            canon = names.from_gguf(g) or g
            c = self.counts[g]
            if s.shape[0] == 1:
                out[canon] = LinearStats(canon, s[0].astype(np.float64), int(c[0]))
            else:
                out[canon] = LinearStats(canon, s.astype(np.float64), c.copy())
        return out


def from_stats(stats: Mapping[str, LinearStats], datasets: list[str] | None = None, chunk_size: int = 512,
               include_head: bool = False) -> Imatrix:
    """quantkit statistics -> an Imatrix keyed by GGUF names (weights llama.cpp has no name for are skipped)."""
    sums, counts = {}, {}
    max_count = 0
    for canon, st in stats.items():
        if canon == HEAD and not include_head:
            continue
        g = names.to_gguf(canon)
        if g is None:
            continue
        s = np.asarray(st.sum_x2, np.float64)
        c = np.atleast_1d(np.asarray(st.count, np.int64))
        sums[g] = s.reshape(-1, s.shape[-1]).astype(np.float32)
        counts[g] = c
        max_count = max(max_count, int(c.max(initial=0)))
    # llama-quantize refuses a GGUF imatrix without imatrix.datasets, and gguf-py drops empty arrays
    return Imatrix(sums, counts, list(datasets or ["quantkit"]), max_count // chunk_size if chunk_size else 0, chunk_size)


def write_imatrix(path: str | Path, imatrix: Imatrix) -> Path:
    """Write `imatrix` as llama.cpp's GGUF imatrix file, through formats.gguf_writer (so formats.atomic): the
    bytes gguf-py's GGUFWriter writes for it, which also always adds general.architecture (llama.cpp's loader
    ignores it in an imatrix)."""
    from gguf import GGUFValueType

    from quantkit.formats import gguf_writer as gw

    meta = {"general.architecture": gw.string("imatrix"), "general.type": gw.string("imatrix")}
    if imatrix.datasets:  # gguf-py leaves an empty array out; llama-quantize then refuses the file
        meta[KEY_DATASETS] = gw.array(imatrix.datasets, GGUFValueType.STRING)
    meta[KEY_CHUNK_COUNT] = gw.u32(imatrix.chunk_count)
    meta[KEY_CHUNK_SIZE] = gw.u32(imatrix.chunk_size)
    data = {}
    for g in sorted(imatrix.sums):
        s = np.ascontiguousarray(imatrix.sums[g], np.float32)
        data[f"{g}.in_sum2"] = s.reshape(-1, s.shape[-1])
        data[f"{g}.counts"] = np.asarray(imatrix.counts[g], np.float32).reshape(-1, 1)
    tensors = [gw.TensorEntry(name, a.shape, "F32") for name, a in data.items()]
    return gw.write(Path(path), meta, tensors, lambda t: np.ascontiguousarray(data[t.name], "<f4"))


def capture_imatrix(source, calib: str = "c4", calib_tokens: int = 128 * 512, chunk_size: int = 512,
                    progress: bool = True) -> Imatrix:
    """`quantkit imatrix`: quantkit's streaming capture of `source` (a formats.source.TensorSource) over
    `calib_tokens` of calibration text in chunks of `chunk_size`, as an Imatrix for llama-quantize."""
    from quantkit.calibration.capture import calibration_ids, capture

    from quantkit.calibration.embed_importance import table_importance

    ids = calibration_ids(source.tokenizer(), calib, max(1, calib_tokens // chunk_size), chunk_size)
    source.check_finite(progress)
    result = capture(source.spec, source, ids, progress=progress)
    imatrix = from_stats(result.stats, datasets=[calib], chunk_size=chunk_size)
    # The lookup tables' importance, which llama-imatrix cannot measure (a table is read, not multiplied): stored
    # as in_sum2 with a count of 1, so in_sum2 / counts is the importance itself. llama-quantize then weighs
    # token_embd by it, and `compress --imatrix` uses it as quantkit's own capture would.
    for canon, imp in table_importance(source.spec, result, source).items():
        g = names.to_gguf(canon)
        imatrix.sums[g] = np.asarray(imp, np.float32).reshape(1, -1)
        imatrix.counts[g] = np.ones(1, np.int64)
    return imatrix


def for_model(imatrix: Imatrix, table, path: Path) -> dict[str, LinearStats]:
    """`compress --imatrix FILE`: the file's entries as LinearStats by canonical name, checked against the model's
    tensor table (quantkit.tensor_table): an entry for a tensor the model does not have, one whose column (or
    expert) count differs, or a decoder linear the file lacks is a one-line error (a file for another model)."""
    where = f"--imatrix {path}"
    stats = imatrix.stats()
    for n, st in stats.items():
        if n not in table:
            raise BadOption(f"{where}: entry {names.to_gguf(n) or n} is for a tensor this model does not have "
                            "(an imatrix for another model?)")
        row = table[n]
        experts = row.shape[0] if len(row.shape) == 3 else None
        got = (st.sum_x2.shape[0] if st.experts else None, st.sum_x2.shape[-1])
        if got != (experts, row.cols):
            raise BadOption(f"{where}: entry {row.gguf} has {got[1]} columns" + (f" x {got[0]} experts" if got[0] else "")
                            + f", the model's tensor {row.cols}" + (f" x {experts} experts" if experts else "")
                            + " (an imatrix for another model?)")
    missing = [r.gguf for r in table.values() if r.fixed is None and r.gguf.startswith("blk.") and r.name not in stats]
    if missing:
        raise BadOption(f"{where}: no entry for {missing[0]}" + (f" and {len(missing) - 1} more decoder tensors"
                                                                  if len(missing) > 1 else ""))
    return stats


def read_imatrix(path: str | Path) -> Imatrix:
    """Read a GGUF imatrix (llama-imatrix's or quantkit's); checks what common_imatrix_load checks."""
    from quantkit.formats.gguf_reader import GGUFFile

    f = GGUFFile(Path(path))
    try:
        meta = f.metadata
        missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in meta]
        if missing:
            raise BadFile(f"{path}: not an imatrix file with metadata (missing {', '.join(missing)})")
        pairs: dict[str, dict[str, object]] = {}
        for name, t in f.tensors.items():
            for suffix in (".in_sum2", ".counts"):
                if name.endswith(suffix):
                    pairs.setdefault(name[: -len(suffix)], {})[suffix] = t
        sums, counts = {}, {}
        for g, p in sorted(pairs.items()):
            if len(p) != 2:
                raise BadFile(f"{path}: {g} has in_sum2 or counts but not both")
            ts, tc = p[".in_sum2"], p[".counts"]
            if ts.ggml_type.name != "F32" or tc.ggml_type.name != "F32":
                raise BadFile(f"{path}: {g}: sums and counts must be F32")
            c = np.frombuffer(f.raw(tc.name), np.float32).copy()
            s = np.frombuffer(f.raw(ts.name), np.float32).copy()
            if c.size == 0 or s.size % c.size:
                raise BadFile(f"{path}: {g}: {s.size} sums do not split into {c.size} matrices")
            sums[g] = s.reshape(c.size, -1)
            counts[g] = np.floor(np.abs(c) + 0.5).astype(np.int64) * np.sign(c).astype(np.int64)  # lround
        return Imatrix(sums, counts, [str(d) for d in meta[KEY_DATASETS]], int(meta[KEY_CHUNK_COUNT]),
                       int(meta[KEY_CHUNK_SIZE]))
    finally:
        f.close()

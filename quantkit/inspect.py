"""What is inside a build: a GGUF file or a safetensors directory (plain or
compressed-tensors), as a plain `Inventory` for tables and JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantkit.errors import BadFile
from quantkit.formats import names
from quantkit.formats.names import GROUPS, group_of
from quantkit.formats.pack_quantized import config_group


@dataclass
class TensorRow:
    name: str  # as stored in the file
    group: str
    type: str
    shape: list[int]
    nbytes: int

    @property
    def n_params(self) -> int:
        return math.prod(self.shape)


@dataclass
class Inventory:
    path: str
    format: str
    file_bytes: int
    metadata: dict = field(default_factory=dict)
    tensors: list[TensorRow] = field(default_factory=list)
    mmproj: dict | None = None  # a text GGUF's mmproj beside it: path, file_bytes, tensors, tensor_bytes

    def totals(self) -> dict[str, dict]:
        out = {}
        for g in GROUPS:
            rows = [t for t in self.tensors if t.group == g]
            if rows:
                p, b = sum(t.n_params for t in rows), sum(t.nbytes for t in rows)
                out[g] = {"params": p, "bytes": b, "bpw": 8 * b / p if p else None}
        return out

    @property
    def n_params(self) -> int:
        return sum(t.n_params for t in self.tensors)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["totals"] = self.totals()
        d["n_params"] = self.n_params
        tensor_bytes = sum(t.nbytes for t in self.tensors)
        d["tensor_bytes"] = tensor_bytes
        d["bpw"] = 8 * tensor_bytes / self.n_params if self.n_params else None  # llama.cpp's BPW: tensor data only
        return d


def _summary(value):
    """Metadata values for display: long arrays (the vocabulary) as their length."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list) and len(value) > 64:
        return f"[{len(value)} items]"
    return value


def inspect_gguf(path: Path) -> Inventory:
    from quantkit.formats.gguf_reader import GGUFFile

    f = GGUFFile(path)
    meta = {k: _summary(v) for k, v in f.metadata.items()}
    rows = []
    for t in f.tensors.values():
        canon = names.from_gguf(t.name) or t.name
        rows.append(TensorRow(t.name, group_of(canon), t.ggml_type.name, list(t.shape), t.nbytes))
    inv = Inventory(str(path), "gguf", f.size, meta, rows)
    f.close()
    if meta.get("general.type") != "mmproj":
        inv.mmproj = _mmproj_beside(path)
    return inv


def _mmproj_beside(path: Path) -> dict | None:
    """The towers' file `quantkit compress` (or a release) puts beside a text GGUF: mmproj-*.gguf in its folder."""
    from quantkit.formats.gguf_reader import GGUFFile

    found = sorted(path.parent.glob("mmproj-*.gguf"))
    if not found:
        return None
    f = GGUFFile(found[0])
    try:
        return {"path": str(found[0]), "file_bytes": f.size, "tensors": len(f.tensors),
                "tensor_bytes": sum(t.nbytes for t in f.tensors.values())}
    finally:
        f.close()


_CT_PARTS = (".weight_packed", ".weight_scale", ".weight_zero_point", ".weight_shape", ".weight_g_idx")
_WIDTH = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I32": 4, "I64": 8, "U8": 1, "I8": 1, "BOOL": 1}


def ct_scheme_label(qcfg: dict | None, module: str) -> str:
    """The compressed-tensors scheme of `module` as "int4-g128" / "int8-channel-asym" (formats.pack_quantized
    IntScheme.label) from the config group that covers it (formats.pack_quantized.config_group)."""
    g = config_group(qcfg, module)
    if g is None:
        return "packed"
    w = g.get("weights") or {}
    g = "channel" if w.get("strategy") == "channel" else f"g{w.get('group_size')}"
    return f"{w.get('type', 'int')}{w.get('num_bits')}-{g}" + ("" if w.get("symmetric", True) else "-asym")


def inspect_safetensors(directory: Path) -> Inventory:
    """A Hugging Face directory (model.safetensors, or the shards its index lists; read as formats.hf_source reads
    them, with the same errors). A compressed-tensors module's parts (weight_packed, weight_scale,
    weight_zero_point, weight_shape) are one row: `<module>.weight` with its logical shape, its scheme as the type and
    all the parts' bytes, so its bits per weight include the scales."""
    from quantkit.formats.hf_source import canonical_name, open_safetensors, read_json, shard_map

    cfg_path = directory / "config.json"
    meta, qcfg = {}, None
    if cfg_path.exists():  # optional here: inspect shows what is stored, with or without a model config
        cfg = read_json(cfg_path)
        if not isinstance(cfg, dict):
            raise BadFile(f"{cfg_path}: expected a JSON object, found {type(cfg).__name__}")
        qcfg = cfg.get("quantization_config")
        meta = {"architectures": cfg.get("architectures"), "quantization_config": qcfg}
    found: dict[str, tuple[str, list[int], int]] = {}
    shapes: dict[str, list[int]] = {}
    handles = {}
    for n, shard in shard_map(directory).items():
        h = handles.get(shard) or handles.setdefault(shard, open_safetensors(shard))
        try:
            sl = h.get_slice(n)
        except Exception:  # SafetensorError
            raise BadFile(f"{shard}: tensor {n!r} is not in this shard, though model.safetensors.index.json puts it "
                          "there") from None
        shape, dtype = [int(d) for d in sl.get_shape()], sl.get_dtype()
        found[n] = (dtype, shape, math.prod(shape) * _WIDTH.get(dtype, 4))
        if n.endswith(".weight_shape"):
            shapes[n.removesuffix(".weight_shape")] = [int(d) for d in h.get_tensor(n).tolist()]
    rows = []
    for n, (dtype, shape, nbytes) in found.items():
        module = next((n.removesuffix(s) for s in _CT_PARTS if n.endswith(s)), None)
        if module is not None and module in shapes:
            if not n.endswith(".weight_packed"):
                continue  # counted with its module's packed weight
            nbytes = sum(found[module + s][2] for s in _CT_PARTS if module + s in found)
            n, dtype, shape = module + ".weight", ct_scheme_label(qcfg, module), shapes[module]
        rows.append(TensorRow(n, group_of(canonical_name(n) or n), dtype, shape, nbytes))
    total = sum(p.stat().st_size for p in handles)
    return Inventory(str(directory), "safetensors", total, meta, rows)


def inspect_path(path: Path) -> Inventory:
    path = Path(path)
    if path.is_dir():
        return inspect_safetensors(path)
    if not path.exists():
        raise BadFile(f"{path}: no such file or directory")
    return inspect_gguf(path)

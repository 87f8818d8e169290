"""The work folder OUT/work: what an interrupted `quantkit compress` needs to go on (`--resume`).

    run.json        the run's fingerprint: quantkit version, source files (sizes, mtimes), options, torch's
                    thread count (the CPU forward's sums, hence the bytes, depend on it)
    plan.json       the plan (plan.Plan.to_json), and importance.npz: the pre-capture importance (budget builds,
                    imatrix); plan.json is written second, so its presence says both are there
    capture.pt      the GPTQ capture after its last completed stage (calibration states, KV for sharing, the
                    accumulators that span stages); ple.pt the per-layer inputs, fixed after the embedding
    tables.npz      the lookup tables' importance, once the capture is complete (capture.pt is then dropped)
    NAME.npy        every tensor quantized so far (NAME.npz: a compressed-tensors group quantization)

Every file goes through formats.atomic, so a kill at any moment leaves the previous state valid, and a resumed run
gives the same bytes as one that never stopped. A work folder from an earlier run is never reused silently: without
--resume the run refuses to start; with --resume and a different source, options, thread count or quantkit version
it refuses too.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from quantkit import __version__
from quantkit.calibration.capture import Checkpoint
from quantkit.errors import BadOption
from quantkit.formats.atomic import atomic_file, atomic_write
from quantkit.kernels import group
from quantkit.plan import Plan
from quantkit.tensor_table import TensorTable

# options whose flag is not "--" + the field name with dashes
OPTION_FLAGS = {"type_name": "--type", "eval_tokens": "--tokens", "recipe_file": "--recipe", "imatrix_file": "--imatrix"}
# options that do not change the build (only what is printed or where it is judged)
NOT_FINGERPRINTED = ("progress", "dry_run")


def fingerprint(source_path: Path, options: dict) -> dict:
    """What a resumed run must share with the interrupted one: quantkit's version, the source's files (and the
    calibration text file's) with their sizes and modification times, every option, and torch's thread count
    (a run is byte-for-byte repeatable at a fixed count; batched matmuls split their sums by thread)."""
    files = {"source": _file_stats(Path(source_path))}
    for what in ("calib", "recipe_file", "imatrix_file"):
        if options.get(what) and Path(options[what]).is_file():
            files[what] = _file_stats(Path(options[what]))
    options = {k: v for k, v in options.items() if k not in NOT_FINGERPRINTED}
    return json.loads(json.dumps({"quantkit": __version__, "source": str(Path(source_path).resolve()),
                                  "files": files, "options": options, "threads": torch.get_num_threads()}))


def _file_stats(path: Path) -> dict[str, list[int]]:
    """name -> [size, mtime in ns] of a file, or of every file directly in a directory."""
    paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return {str(p.resolve()): [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}


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


class WorkDir:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def open(cls, path: Path, fingerprint: dict, resume: bool) -> "WorkDir":
        """Create the work folder for a new run, or check that the one there belongs to this run (resume)."""
        record = path / "run.json"
        if not resume:
            if path.exists():
                raise BadOption(f"{path} holds an interrupted compress: pass --resume to continue it, or remove the "
                                "folder to start over")
            path.mkdir(parents=True)
            try:
                atomic_write(record, json.dumps(fingerprint, indent=1).encode())
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            return cls(path)
        if not record.is_file():
            raise BadOption(f"--resume: nothing to resume in {path.parent} (no {path.name}/{record.name}: no "
                            "interrupted compress there)")
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError) as e:
            raise BadOption(f"--resume: {record} is unreadable ({e}); remove {path} to start over") from None
        diffs = _differences(old, fingerprint)
        if diffs:
            raise BadOption(f"--resume: {path} was made by another run ({'; '.join(diffs)}); run the interrupted "
                            f"command again with --resume, or remove {path} to start over")
        return cls(path)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # -- the plan and the pre-capture importance

    def save_plan(self, plan: Plan, importance: dict[str, np.ndarray]) -> None:
        self._save_arrays("importance.npz", importance)
        atomic_write(self.path / "plan.json", plan.to_json())

    def load_plan(self, table: TensorTable) -> tuple[Plan, dict[str, np.ndarray]] | None:
        if not (self.path / "plan.json").exists():
            return None
        return Plan.from_json((self.path / "plan.json").read_bytes(), table), self._load_arrays("importance.npz")

    # -- the GPTQ capture

    def save_checkpoint(self, ck: Checkpoint) -> None:
        """capture.pt; the per-layer inputs (the bulk of an E-model's states, fixed after the embedding) go to
        ple.pt once."""
        d = ck.to_dict()
        ple = [st.pop("ple") for st in d["states"]]
        if ck.stage == -1:
            with atomic_file(self.path / "ple.pt") as f:
                torch.save(ple, f)
        with atomic_file(self.path / "capture.pt") as f:
            torch.save(d, f)

    def load_checkpoint(self, device: str) -> Checkpoint | None:
        if not (self.path / "capture.pt").exists():
            return None
        d = torch.load(self.path / "capture.pt", map_location=device, weights_only=True)
        ple = torch.load(self.path / "ple.pt", map_location=device, weights_only=True)
        for st, p in zip(d["states"], ple, strict=True):
            st["ple"] = p
        return Checkpoint.from_dict(d)

    def save_tables(self, tables: dict[str, np.ndarray]) -> None:
        """The capture is complete: its lookup tables' importance replaces its checkpoint."""
        self._save_arrays("tables.npz", tables)
        for name in ("capture.pt", "ple.pt"):
            (self.path / name).unlink()

    def load_tables(self) -> dict[str, np.ndarray] | None:
        return self._load_arrays("tables.npz") if (self.path / "tables.npz").exists() else None

    # -- quantized tensors

    def save_tensor(self, name: str, data: np.ndarray) -> None:
        with atomic_file(self.path / f"{name}.npy") as f:
            np.save(f, np.ascontiguousarray(data))

    def load_tensor(self, name: str) -> np.ndarray | None:
        p = self.path / f"{name}.npy"
        return np.load(p) if p.exists() else None

    def save_group(self, name: str, gq: group.GroupQuant) -> None:
        zps = {} if gq.zero_points is None else {"zero_points": gq.zero_points}
        with atomic_file(self.path / f"{name}.npz") as f:
            np.savez(f, codes=gq.codes, scales=gq.scales, bits=gq.bits, group_size=gq.group_size, **zps)

    def load_group(self, name: str) -> group.GroupQuant | None:
        p = self.path / f"{name}.npz"
        if not p.exists():
            return None
        with np.load(p) as z:
            zps = z["zero_points"] if "zero_points" in z.files else None
            return group.GroupQuant(z["codes"], z["scales"], zps, int(z["bits"]), int(z["group_size"]), zps is None)

    def _save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(self.path / name, buf.getvalue())

    def _load_arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.path / name) as z:
            return {n: z[n] for n in z.files}

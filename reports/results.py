"""Build results at the boundary between evaluation and reporting.

A run directory holds `report.json`: one `RunReport` with one `BuildResult` per
build measured in that run (quantkit's own and, when measured side by side,
llama.cpp's quantizations of the same model on the same tokens).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantkit.errors import BadFile
from quantkit.formats.atomic import atomic_write

REPORT_NAME = "report.json"


def json_bytes(d, sort_keys: bool = False) -> bytes:
    """`d` as the indented JSON text every report file holds, newline-terminated."""
    return (json.dumps(d, indent=2, sort_keys=sort_keys) + "\n").encode("utf-8")


@dataclass
class BuildResult:
    name: str  # e.g. "quantkit --bits 4" or "llama.cpp Q4_K_M"
    tool: str  # "quantkit" | "llama.cpp"
    file_bytes: int
    bpw: float
    ppl: float
    mean_kld: float | None = None
    p99_kld: float | None = None
    top1: float | None = None
    path: str | None = None
    mmproj_bytes: int | None = None  # the towers' mmproj GGUF beside a multimodal build


@dataclass
class RunReport:
    model: str
    text: str
    n_tokens: int
    judge: str  # "quantkit" | "llama.cpp"
    builds: list[BuildResult] = field(default_factory=list)
    reference_ppl: float | None = None

    def save(self, run_dir: Path) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        return atomic_write(run_dir / REPORT_NAME, json_bytes(asdict(self), sort_keys=True))

    @staticmethod
    def load(path: Path) -> "RunReport":
        p = path / REPORT_NAME if path.is_dir() else path
        try:
            d = json.loads(p.read_text())
            builds = [BuildResult(**b) for b in d.pop("builds")]
            return RunReport(builds=builds, **d)
        except FileNotFoundError:
            raise BadFile(f"{p}: no report.json (is this a quantkit run directory?)") from None
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise BadFile(f"{p}: not a quantkit report ({e})") from e

"""The options of one `quantkit compress` run, and the one place its names are made: the label in paths
(`label`, `default_out`, `build_path`), the flags in the build's metadata and report (`recipe`) and the provenance
keys (`provenance`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quantkit.errors import BadOption
from quantkit.formats import pack_quantized
from quantkit.formats.source import TensorSource
from quantkit.overrides import Overrides

RECIPES = ("type_name", "bits", "max_size", "like", "recipe_file")

# The default calibration set. A calibration pass costs about tokens x the decoder's linear weights per token (the
# forward, and as much again for the Hessians), so the default caps that product at 128 x 512 tokens times 128 Mi
# linear weights: Gemma 4 E2B (1.84 G) gets 9 sequences. Smaller models get at most 32 x 512 tokens: on the Gemma 3
# 270M (100 M) the mean KLD of a --bits 4 build is flat from 2k to 65k calibration tokens (benches/calib_tokens.py,
# docs/RESULTS.md), and 16,384 tokens cut the README's command from 65,536's GPTQ time by 3.5x at the same KLD.
# Never below 8 sequences.
CALIB_TOKENS = 32 * 512
CALIB_WEIGHT_TOKENS = 128 * 512 * 128 * 2**20
MIN_CALIB_TOKENS = 8 * 512


@dataclass
class CompressOptions:
    type_name: str | None = None
    bits: float | None = None  # an int when whole ("--bits 4" in the build's metadata)
    max_size: int | None = None
    like: str | None = None
    recipe_file: str | None = None  # an earlier run's plan.json
    imatrix_file: str | None = None  # llama.cpp's imatrix: the importance instead of quantkit's pre-capture
    ple_type: str | None = None
    overrides: Overrides = field(default_factory=Overrides)  # --tensor-type and friends
    method: str = "gptq"
    calib: str = "c4"
    calib_tokens: int = CALIB_TOKENS  # the CLI's default: default_calib_tokens(source)
    text: str = "wiki"
    eval_tokens: int = 8192
    judge: str = "quantkit"
    format: str = "gguf"
    group_size: int = 128  # --format safetensors
    symmetric: bool = True  # --format safetensors
    mmproj_type: str | None = "F16"  # the towers' mmproj GGUF; None: --no-mmproj
    dry_run: bool = False
    device: str = "cpu"
    progress: bool = True

    def mode(self) -> str:
        """Which of --type, --bits, --max-size, --like was given (exactly one must be)."""
        given = [k for k in RECIPES if getattr(self, k) is not None]
        if len(given) != 1:
            raise BadOption("give exactly one of --type, --bits, --max-size, --like, --recipe")
        return given[0]

    @property
    def budgeted(self) -> bool:
        return self.mode() in ("bits", "max_size")

    @property
    def calibrated(self) -> bool:
        return self.method != "rtn"

    @property
    def effort(self) -> str:
        # --like / --type reproduce llama.cpp's bytes (rtn, imatrix); budget builds are quantkit's own, and take the
        # IQ2/IQ3 grid types' short scale search: 3-10x faster for 1-2% more error (kernels/iquants.SCALE_TRIALS)
        return "fast" if self.budgeted else "exact"

    def recipe(self) -> str:
        """The options as flags ("--bits 4 --method gptq"): the build's quantkit.recipe metadata and report name."""
        if self.format == "safetensors":
            return (f"--format safetensors --bits {self.bits} --group-size {self.group_size}"
                    + ("" if self.symmetric else " --asym") + f" --method {self.method}")
        flags = {"type_name": "--type", "bits": "--bits", "max_size": "--max-size", "like": "--like",
                 "recipe_file": "--recipe", "ple_type": "--ple-type", "imatrix_file": "--imatrix"}
        parts = [f"{flag} {getattr(self, k)}" for k, flag in flags.items() if getattr(self, k)]
        return " ".join([*parts, *self.overrides.label(), f"--method {self.method}"])

    def label(self) -> str:
        """The run's name in paths ("bits4-gptq", "likeQ2_K-imatrix", "int4-g128-gptq"): the one place it is made."""
        if self.format == "safetensors":
            return f"{pack_quantized.IntScheme(self.bits, self.group_size, self.symmetric).label}-{self.method}"
        short = {"type_name": "type", "bits": "bits", "max_size": "max", "like": "like", "ple_type": "ple"}
        parts = [f"{tag}{getattr(self, k)}" for k, tag in short.items() if getattr(self, k)]
        if self.recipe_file:
            parts.insert(0, "recipe-" + Path(self.recipe_file).parent.name)
        if self.overrides:
            parts.append("custom")  # --tensor-type and friends: the full flags are in the build's quantkit.recipe
        return "-".join([*parts, self.method])

    def provenance(self) -> dict[str, str]:
        calibrated = self.calibrated and not (self.imatrix_file and self.method == "imatrix")
        # quantkit's E[x^2] per input column; said in few bytes, since the header counts against --max-size
        importance = "quantkit capture" if self.calibrated else "none"
        if self.imatrix_file and self.calibrated:
            importance = f"{Path(self.imatrix_file).name} (llama.cpp imatrix file)"
        return {"recipe": self.recipe(),
                "calibration": f"{self.calib}:{self.calib_tokens}" if calibrated else "none",
                "imatrix": importance}


def linear_weights_per_token(source: TensorSource) -> int:
    """Decoder linear weights one token passes through: attention and MLP, and of each expert stack its top_k share."""
    spec = source.spec
    n = 0
    for row in source.table.values():
        if row.group in ("attention", "mlp") and row.fixed is None and len(row.shape) == 2:
            n += row.n_params
        elif row.group == "experts" and row.fixed is None and len(row.shape) == 3:
            n += row.n_params * spec.top_k // max(spec.n_experts, 1)
    return n


def default_calib_tokens(source: TensorSource) -> int:
    """--calib-tokens when not given: CALIB_TOKENS, scaled down by the model's linear weights per token (whole
    512-token sequences, at least MIN_CALIB_TOKENS)."""
    fit = CALIB_WEIGHT_TOKENS // max(linear_weights_per_token(source), 1) // 512 * 512
    return max(MIN_CALIB_TOKENS, min(CALIB_TOKENS, fit))


def default_out(model: str, opts: CompressOptions) -> Path:
    return Path("out") / f"{Path(model).stem}-{opts.label()}"


def build_path(source: TensorSource, out_dir: Path, opts: CompressOptions) -> Path:
    stem = source.path.stem if source.path.is_file() else source.path.name
    return out_dir / (f"{stem}-{opts.label()}" + (".gguf" if opts.format == "gguf" else ""))


def mmproj_path(source: TensorSource, out_dir: Path, type_name: str) -> Path:
    """OUT/mmproj-<checkpoint>-<TYPE>.gguf, beside the text build (the public releases' naming)."""
    return out_dir / f"mmproj-{source.path.name}-{type_name}.gguf"

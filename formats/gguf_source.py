"""A GGUF file (arch `gemma3` or `gemma4`, any ggml type) as a TensorSource.

The config is rebuilt from the metadata the way llama.cpp's loader reads it
(src/models/gemma3.cpp, gemma4.cpp, llama-model.cpp); tensors are mmapped and
dequantized on demand, one at a time.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from quantkit.calibration.tokenizer import GGUFVocab, TextTokenizer, from_gguf_vocab
from quantkit.errors import BadConfig, BadFile, UnsupportedModel
from quantkit.formats import names
from quantkit.formats.gguf_reader import GGUFFile
from quantkit.kernels import registry
from quantkit.formats.source import TensorInfo, TensorSource
from quantkit.models.spec import ARCHES, MAX_LAYERS, LayerSpec, ModelSpec, config_number, kv_sources, tensor_shapes


class GGUFSource(TensorSource):
    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = GGUFFile(self.path)
        self.meta = self.file.metadata
        arch = self.meta.get("general.architecture")
        if arch not in ARCHES:
            raise UnsupportedModel(f"{self.path}: general.architecture is {arch!r}; expected one of {', '.join(ARCHES)}")
        self.infos = {}
        for t in self.file.tensors.values():
            canon = names.from_gguf(t.name)
            if canon is None:
                continue  # rope_freqs: derived from the config when writing
            self.infos[canon] = TensorInfo(canon, t.shape, t.ggml_type.name, t.nbytes, t.name)
        self.spec = spec_from_gguf(self.meta, self.infos, str(self.path), self._rope_freqs())
        implied = tensor_shapes(self.spec)
        for canon, info in self.infos.items():
            i = names.layer_of(canon)
            if i is not None and i >= self.spec.n_layers:
                raise BadConfig(f"{self.path}: tensor {info.file_name!r} is for layer {i}, but {self.spec.arch}.block_count "
                                f"is {self.spec.n_layers}")
            if canon in implied and info.shape != implied[canon]:
                raise BadConfig(f"{self.path}: tensor {info.file_name!r} has shape {info.shape}; the metadata "
                                f"({self.spec.arch}.embedding_length, head counts, ...) implies {implied[canon]}")

    def _rope_freqs(self) -> np.ndarray | None:
        t = self.file.tensors.get("rope_freqs.weight")
        return None if t is None else self._decode(t.name, t.shape)

    def _decode(self, file_name: str, shape: tuple[int, ...]) -> np.ndarray:
        t = self.file.tensors[file_name]
        return registry.dequantize(t.ggml_type, self.file.raw(file_name), shape)

    def _read(self, info: TensorInfo) -> np.ndarray:
        return self._decode(info.file_name, info.shape)

    def _read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        t = self.file.tensors[info.file_name]
        row = registry.row_nbytes(t.ggml_type.name, info.shape[1])  # ggml rows are contiguous, whole blocks each
        data = self.file.raw(info.file_name)[start * row: stop * row]
        return registry.dequantize(t.ggml_type, data, (stop - start, info.shape[1]))

    def tokenizer(self) -> TextTokenizer:
        vocab = gguf_vocab(self.meta, str(self.path))
        if len(vocab.tokens) > self.spec.vocab_size:
            raise BadFile(f"{self.path}: tokenizer.ggml.tokens holds {len(vocab.tokens)} tokens, token_embd.weight "
                          f"only {self.spec.vocab_size} rows")
        return from_gguf_vocab(vocab, str(self.path))


def gguf_vocab(meta: dict, where: str) -> GGUFVocab:
    if "tokenizer.ggml.tokens" not in meta:
        raise BadFile(f"{where}: no tokenizer.ggml.tokens; the GGUF carries no tokenizer")
    return GGUFVocab(
        model=str(meta.get("tokenizer.ggml.model", "llama")),
        tokens=list(meta["tokenizer.ggml.tokens"]),
        scores=meta.get("tokenizer.ggml.scores"),
        token_types=meta.get("tokenizer.ggml.token_type"),
        merges=meta.get("tokenizer.ggml.merges"),
        bos_id=_token_id(meta, "tokenizer.ggml.bos_token_id", 2, where),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
    )


def _token_id(meta: dict, key: str, default: int, where: str) -> int:
    return config_number(meta[key], f"metadata key {key!r}", where, int, 0) if key in meta else default


def _per_layer(value, n: int, key: str, where: str) -> list:
    if isinstance(value, np.ndarray) or isinstance(value, list):
        if len(value) != n:
            raise BadConfig(f"{where}: {key} has {len(value)} entries, block_count is {n}")
        value = [v.item() if hasattr(v, "item") else v for v in value]
    else:
        value = [value] * n
    if bad := [v for v in value if not isinstance(v, numbers.Real)]:
        raise BadConfig(f"{where}: metadata key {key!r} holds {bad[0]!r}; expected numbers")
    return value


def spec_from_gguf(meta: dict, infos: dict[str, TensorInfo], where: str, rope_freqs: np.ndarray | None = None) -> ModelSpec:
    arch = meta["general.architecture"]

    def get(key, default=None, required=True, kind=int, minimum=1, maximum=None):
        """The value of `arch.key`, checked to be a number of `kind` (kind=None: any value)."""
        full = f"{arch}.{key}"
        if full not in meta:
            if required and default is None:
                raise BadConfig(f"{where}: metadata key {full!r} is missing")
            return default
        return meta[full] if kind is None else config_number(meta[full], f"metadata key {full!r}", where, kind, minimum, maximum)

    n = int(get("block_count", maximum=MAX_LAYERS))
    hidden = int(get("embedding_length"))
    n_heads = int(get("attention.head_count"))
    n_kv = _per_layer(get("attention.head_count_kv", kind=None), n, f"{arch}.attention.head_count_kv", where)
    ffn = _per_layer(get("feed_forward_length", kind=None), n, f"{arch}.feed_forward_length", where)
    eps = float(get("attention.layer_norm_rms_epsilon", 1e-6, required=False, kind=float, minimum=None))
    window = int(get("attention.sliding_window", 512, required=False))
    softcap = get("final_logit_softcapping", None, required=False, kind=float, minimum=None)
    if "embed_tokens.weight" not in infos:
        raise BadFile(f"{where}: tensor 'token_embd.weight' is missing")
    vocab = infos["embed_tokens.weight"].shape[0]
    common = dict(
        arch=arch, vocab_size=vocab, hidden_size=hidden, n_heads=n_heads, rms_eps=eps, sliding_window=window,
        final_logit_softcap=float(softcap) if softcap else None,
        context_length=int(get("context_length", 131072, required=False)),
        bos_token_id=_token_id(meta, "tokenizer.ggml.bos_token_id", 2, where),
        eos_token_id=_token_id(meta, "tokenizer.ggml.eos_token_id", 1, where),
    )
    if arch == "gemma3":
        hd = int(get("attention.key_length", hidden // n_heads, required=False))
        if hd < 1:
            raise BadConfig(f"{where}: no {arch}.attention.key_length, and embedding_length / head_count is {hidden}/{n_heads}")
        theta = float(get("rope.freq_base", 1e6, required=False, kind=float, minimum=None))
        scale = float(get("rope.scaling.factor", 1.0, required=False, kind=float, minimum=None) or 1.0)
        # llama.cpp hard-codes Gemma 3's pattern (5 sliding + 1 full), the sliding
        # theta 1e4, and the query scale 1/sqrt(head_dim) (1/sqrt(H/n_head) for 27B).
        layers = tuple(
            LayerSpec(
                sliding=bool((i + 1) % 6), head_dim=hd, n_kv_heads=int(n_kv[i]), ffn_dim=int(ffn[i]),
                rope_theta=1e4 if (i + 1) % 6 else theta, rope_scale=1.0 if (i + 1) % 6 else scale,
            )
            for i in range(n)
        )
        q_scale = (hidden / n_heads) ** -0.5 if n == 62 else hd**-0.5
        return ModelSpec(layers=layers, attn_scale=q_scale, **common)

    hd_full = int(get("attention.key_length"))
    hd_swa = int(get("attention.key_length_swa"))
    pattern = get("attention.sliding_window_pattern", kind=None)
    sliding = [bool(x) for x in _per_layer(pattern, n, f"{arch}.attention.sliding_window_pattern", where)]
    types = ["sliding_attention" if s else "full_attention" for s in sliding]
    n_shared = int(get("attention.shared_kv_layers", 0, required=False, minimum=0))
    sources = kv_sources(types, n_shared)
    theta_full = float(get("rope.freq_base", 1e6, required=False, kind=float, minimum=None))
    theta_swa = float(get("rope.freq_base_swa", 1e4, required=False, kind=float, minimum=None))
    # Proportional RoPE is stored as `rope_freqs`: 1.0 for rotated pairs, 1e30 for the rest.
    frac_full = 1.0 if rope_freqs is None else float(np.count_nonzero(rope_freqs < 1e10)) * 2 / hd_full
    layers = []
    for i in range(n):
        has_v = f"layers.{i}.self_attn.v_proj.weight" in infos
        has_k = f"layers.{i}.self_attn.k_proj.weight" in infos
        layers.append(
            LayerSpec(
                sliding=sliding[i], head_dim=hd_swa if sliding[i] else hd_full, n_kv_heads=int(n_kv[i]),
                ffn_dim=int(ffn[i]), rope_theta=theta_swa if sliding[i] else theta_full,
                rope_fraction=1.0 if sliding[i] else frac_full, kv_source=sources[i],
                k_eq_v=(not sliding[i]) and has_k and not has_v and sources[i] is None,
            )
        )
    ple = int(get("embedding_length_per_layer_input", 0, required=False, minimum=0))
    n_exp = int(get("expert_count", 0, required=False, minimum=0))
    return ModelSpec(
        layers=tuple(layers), attn_scale=1.0, ple_dim=ple,
        ple_vocab=infos["embed_tokens_per_layer.weight"].shape[0] if ple and "embed_tokens_per_layer.weight" in infos else 0,
        n_experts=n_exp, top_k=int(get("expert_used_count", 0, required=False, minimum=0)) if n_exp else 0,
        expert_ffn_dim=int(get("expert_feed_forward_length", 0, required=False, minimum=0)) if n_exp else 0,
        **common,
    )

"""Write a random-weight Gemma 4 checkpoint with a release's real shapes and the
release layout: multimodal config.json (`Gemma4ForConditionalGeneration`), text
tensors under `model.language_model.*`, the vision tower (every size) and audio
tower (E2B/E4B) with transformers' default Gemma4Vision/AudioConfig shapes, as
released (`--stub-towers`: four small stand-ins instead), the redundant
k_proj/v_proj/k_norm on KV-shared layers, bf16 safetensors shards with
`model.safetensors.index.json`, a tokenizer.json (Gemma's 262,144-token
vocabulary, taken from the real Gemma 3 270M) and the release's
processor_config.json (image mean/std, audio feature extractor).

Values have realistic scale: embeddings N(0, 1/H) (unit rows after the sqrt(H)
scale), the PLE table N(0, 1/P), linear weights N(0, 1/in), norms and scalars
near 1. Generation streams one shard at a time.

    .venv/bin/python benches/make_checkpoint.py e2b /tmp/e2b [--layers N] [--shard-gb 2] [--stub-towers]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantkit.formats.gguf_source import GGUFSource  # noqa: E402
from quantkit.models.configs import RELEASES, release_config  # noqa: E402
from quantkit.models.spec import spec_from_hf_config, tensor_shapes  # noqa: E402
from quantkit.sources import gemma3_270m_path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import PROCESSOR_CONFIG  # noqa: E402  the release's processor_config.json

STUB_TOWERS = {  # --stub-towers: a few small stand-ins (the text loader must skip them, not read them)
    "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight": (768, 768),
    "model.audio_tower.layers.0.feed_forward1.ffw_layer_1.linear.weight": (4096, 1024),
    "model.embed_vision.embedding_projection.weight": (1536, 768),
    "model.embed_audio.embedding_projection.weight": (1536, 1536),
}


def tower_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a Gemma4ForConditionalGeneration checkpoint holds outside the text model, with its shape, from
    transformers' modules built on the meta device (nothing allocated); fills config's tower sections with the
    default configs (the released ones)."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration
    from transformers.models.gemma4.configuration_gemma4 import Gemma4AudioConfig, Gemma4VisionConfig

    has_audio = config["text_config"].get("hidden_size_per_layer_input", 0) > 0  # E2B / E4B hear audio
    config["vision_config"] = Gemma4VisionConfig().to_dict()
    config["audio_config"] = Gemma4AudioConfig().to_dict() if has_audio else None
    with torch.device("meta"):
        model = Gemma4ForConditionalGeneration(Gemma4Config(**config))
    return {n: tuple(t.shape) for n, t in model.state_dict().items()
            if not n.startswith(("model.language_model.", "lm_head."))}


def random_tensor(name: str, shape: tuple[int, ...], ple_dim: int, g: torch.Generator) -> torch.Tensor:
    if name.endswith(("_max", "_min")):  # a clipped linear's bounds: wide, finite
        t = (10 + torch.rand(shape, generator=g)) * (1 if name.endswith("_max") else -1)
    elif name.endswith(("norm.weight", "layer_scalar", "router.scale", "per_expert_scale", "per_dim_scale")):
        t = 0.5 + torch.rand(shape, generator=g)
    elif name.endswith("embed_tokens_per_layer.weight"):
        t = torch.randn(shape, generator=g) / math.sqrt(ple_dim)  # scaled by sqrt(P) in the forward
    else:  # embed_tokens (scaled by sqrt(H)) and linear weights: unit-scale outputs
        t = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
    return t.to(torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("release", choices=sorted(RELEASES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, help="keep only the first N decoder layers (same per-layer shapes)")
    ap.add_argument("--shard-gb", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stub-towers", action="store_true", help="four small tower stand-ins instead of the real towers")
    args = ap.parse_args()

    config = release_config(args.release, args.layers)
    spec = spec_from_hf_config(config)
    shapes = {f"model.language_model.{n}": s for n, s in tensor_shapes(spec).items()}
    for i, layer in enumerate(spec.layers):  # the release files also carry these unused tensors
        if layer.kv_source is not None:
            p = f"model.language_model.layers.{i}.self_attn."
            kv = layer.n_kv_heads * layer.head_dim
            shapes.update({p + "k_proj.weight": (kv, spec.hidden_size), p + "v_proj.weight": (kv, spec.hidden_size),
                           p + "k_norm.weight": (layer.head_dim,)})
    if args.stub_towers:
        shapes.update(STUB_TOWERS)
        config["vision_config"] = config["audio_config"] = None  # nothing an mmproj could be made of
    else:
        shapes.update(tower_shapes(config))

    args.out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(args.seed)
    limit = int(args.shard_gb * 1e9)
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        n = math.prod(shape) * 2
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    weight_map = {}
    total = 0
    for k, names in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: random_tensor(n, shapes[n], spec.ple_dim, g) for n in names}
        save_file(tensors, args.out / fname, metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        del tensors
        weight_map.update({n: fname for n in names})
        print(f"wrote {fname} ({len(names)} tensors)", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (args.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    GGUFSource(gemma3_270m_path()).tokenizer().tok.save(str(args.out / "tokenizer.json"))
    (args.out / "processor_config.json").write_text(json.dumps(PROCESSOR_CONFIG, indent=2))
    n_text = sum(math.prod(s) for n, s in shapes.items() if n.startswith("model.language_model."))
    print(f"{args.release}: {n_text:,} text parameters (incl. redundant shared-layer K/V), {total / 1e9:.2f} GB in {len(shards)} shards")


if __name__ == "__main__":
    main()

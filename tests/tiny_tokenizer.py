"""A tiny Gemma-style `tokenizer.json` + `tokenizer_config.json`, built deterministically, for checkpoints that
need a tokenizer (llama.cpp's converter, the GGUF writer).

Same shape as the released Gemma tokenizers: a BPE model with byte fallback whose vocabulary holds the control
tokens first (<pad> <eos> <bos> <unk> <mask>, then chat and "visible" tokens), the 256 <0xXX> byte tokens, then
characters and merged pieces with '▁' for spaces; the named special tokens are also `added_tokens`; one added token
that is not special lies past the base vocabulary. The vocabulary size (base + added) equals `size`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
VISIBLE = ["<|channel>", "<channel|>", '<|"|>']  # Gemma4Model.set_vocab marks these USER_DEFINED
ADDED = "<extra_user_token>"  # an added, non-special token past the base vocabulary

TEXT = """The quick brown fox jumps over the lazy dog. A model that reads text one token at a time needs a
vocabulary; this one is small but has the usual parts: control tokens, byte tokens, letters and merged pieces.
Quantization maps every weight to a few bits, so the size of the file falls while the logits stay close.
Gemma uses a sliding window for most layers and full attention for some, with per layer embeddings on the
edge models. Numbers like 0 1 2 3 4 5 6 7 8 9 and marks like , . ; : ! ? ( ) - ' " appear too.
"""


def build(size: int = 512) -> tuple[Tokenizer, dict]:
    """(tokenizer, tokenizer_config dict) with exactly `size` tokens."""
    head = CONTROL + VISIBLE + [f"<0x{b:02X}>" for b in range(256)]
    n_trained = size - len(head) - 1  # one added token past the base vocabulary
    trainer = trainers.BpeTrainer(vocab_size=n_trained, show_progress=False, special_tokens=[])
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.Replace(" ", "\u2581")
    t.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    t.train_from_iterator([line for line in TEXT.splitlines() if line], trainer=trainer)
    trained = json.loads(t.to_str())["model"]
    pieces = sorted(trained["vocab"], key=trained["vocab"].get)
    pieces = [p for p in pieces if p not in head][:n_trained]
    pieces += [f"<unused{i}>" for i in range(n_trained - len(pieces))]
    vocab = {p: i for i, p in enumerate(head + pieces)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    merges = [(a, b) for a, b in merges if a in vocab and b in vocab and a + b in vocab]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in CONTROL])
    tok.add_tokens([AddedToken(s, normalized=False, special=False) for s in VISIBLE])
    tok.add_tokens([AddedToken(ADDED, normalized=False, special=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    assert tok.get_vocab_size(with_added_tokens=True) == size
    config = {
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "extra_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        "add_bos_token": True, "add_eos_token": False,
        "chat_template": "{% for m in messages %}<start_of_turn>{{ m['content'] }}<end_of_turn>{% endfor %}",
        "model_max_length": 1024,
    }
    return tok, config


def save(directory: Path, size: int = 512) -> None:
    tok, config = build(size)
    directory = Path(directory)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))

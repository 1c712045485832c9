"""Tiny Llama models built from a config in-process, with a BPE tokenizer trained locally.

No hub access: tests and ``pipelines/configs/smoke.yaml`` use these. The checkpoint is a plain HF
directory (``config.json``, ``model.safetensors``, ``tokenizer.json``, chat template)::

    from distill.models.tiny import build_tiny_llama
    build_tiny_llama(TinySource(num_hidden_layers=2), Path("/tmp/tiny"))
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from distill.models.config import TinySource
from distill.stdlib import stdlib_files

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def default_tokenizer_texts(limit: int = 60) -> list[str]:
    """Deterministic training text: the first ``limit`` stdlib modules (sorted by path)."""
    return [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files()[:limit]]


def train_tokenizer(vocab_size: int, texts: Iterable[str]):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(
    src: TinySource, out_dir: Path, texts: Iterable[str] | None = None, dtype: str = "float32"
) -> Path:
    """Write a random tiny Llama + tokenizer checkpoint to ``out_dir`` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(src.vocab_size, texts or default_tokenizer_texts())
    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=src.hidden_size,
        num_hidden_layers=src.num_hidden_layers,
        num_attention_heads=src.num_attention_heads,
        num_key_value_heads=src.num_key_value_heads,
        intermediate_size=src.intermediate_size,
        max_position_embeddings=src.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype=dtype,
    )
    torch.manual_seed(src.seed)
    model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir

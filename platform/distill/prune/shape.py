"""Llama-family shapes: read from an HF config, count their parameters, check a target shape.

Everything here works on ``config.json`` alone, so a bad target fails before any model loads::

    src = ModelShape.from_config(json.loads(Path("teacher/config.json").read_text()))
    target = resolve_shape(TargetShape(num_hidden_layers=20), src)   # DistillError if impossible
    target.params()
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from distill.config.base import DistillError
from distill.prune.config import TargetShape


@dataclass(frozen=True)
class ModelShape:
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    hidden_size: int
    # fixed by pruning
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> ModelShape:
        """From a ``config.json`` dict or a ``PretrainedConfig``."""
        get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
        for key in ("num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_size"):
            if get(key) is None:
                raise DistillError(f"model config has no {key}: not a Llama-family decoder")
        heads = get("num_attention_heads")
        return cls(
            num_hidden_layers=get("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=get("num_key_value_heads") or heads,
            intermediate_size=get("intermediate_size"),
            hidden_size=get("hidden_size"),
            head_dim=get("head_dim") or get("hidden_size") // heads,
            vocab_size=get("vocab_size"),
            tie_word_embeddings=bool(get("tie_word_embeddings", True)),
            attention_bias=bool(get("attention_bias", False)),
            mlp_bias=bool(get("mlp_bias", False)),
        )

    @property
    def q_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def layer_params(self) -> int:
        h, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.attention_bias else 0)
        attn += h if self.attention_bias else 0  # o_proj bias
        mlp = 3 * h * i + (2 * i + h if self.mlp_bias else 0)
        return attn + mlp + 2 * h  # two RMSNorm weights

    def params(self) -> int:
        """Unique parameters (a tied ``lm_head`` counted once), as ``count_parameters`` counts."""
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        return emb + head + self.num_hidden_layers * self.layer_params() + self.hidden_size

    def target_dict(self) -> dict[str, int]:
        d = asdict(self)
        return {k: d[k] for k in TargetShape.model_fields}

    def with_target(self, **kw: int) -> ModelShape:
        return replace(self, **kw)


def _allowed(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def resolve_shape(target: TargetShape, src: ModelShape) -> ModelShape:
    """Fill unset fields from ``src`` and check the shape can be cut from it (DistillError)."""
    t = src.with_target(**target.model_dump(exclude_none=True))
    problems: list[str] = []
    if not 1 <= t.num_hidden_layers <= src.num_hidden_layers:
        problems.append(
            f"num_hidden_layers {t.num_hidden_layers}: allowed 1..{src.num_hidden_layers}"
        )
    if not 1 <= t.num_key_value_heads <= src.num_key_value_heads:
        problems.append(
            f"num_key_value_heads {t.num_key_value_heads}: allowed 1..{src.num_key_value_heads} "
            "(whole key/value groups are kept)"
        )
    kv = t.num_key_value_heads
    if t.num_attention_heads % kv or not 1 <= t.num_attention_heads // kv <= src.q_per_kv:
        ok = [kv * r for r in range(1, src.q_per_kv + 1)]
        problems.append(
            f"num_attention_heads {t.num_attention_heads} with {kv} key/value heads: allowed "
            f"{_allowed(ok)} (a multiple of num_key_value_heads, at most {src.q_per_kv} query "
            "heads per key/value head as in the source)"
        )
    if not 1 <= t.intermediate_size <= src.intermediate_size:
        problems.append(
            f"intermediate_size {t.intermediate_size}: allowed 1..{src.intermediate_size}"
        )
    if not 1 <= t.hidden_size <= src.hidden_size or t.hidden_size % t.num_attention_heads:
        problems.append(
            f"hidden_size {t.hidden_size}: allowed a multiple of num_attention_heads "
            f"({t.num_attention_heads}) up to {src.hidden_size}"
        )
    if problems:
        raise DistillError(
            "prune.shape cannot be cut from the source model: " + "; ".join(problems)
        )
    return t

"""Settings of the ``distill`` stage (``distill:`` section of a pipeline YAML)::

    distill:
      mode: offline            # offline: stored top-k soft labels; online: live teacher;
                               # sft: labels only (the seq-KD ``sft`` stage sets this)
      loss: {name: forward_kl, temperature: 1.0, alpha: 0.1, kd_weight: 1.0}
      on_policy:               # a share of steps trains on the student's own samples (GKD)
        lmbda: 0.5             # 0 = off; 1 = every step
        max_new_tokens: 32
        loss: {name: jsd, beta: 0.5}
      teacher_placement: worker  # worker: a teacher in each worker; actor: one per node
      zero_stage: 2
      num_workers: 2
      max_steps: 50

Every combination that cannot run is refused here, before any work starts.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.config.base import DistillError, StrictModel

LossName = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tv"]


class DivergenceConfig(StrictModel):
    """Which registry divergence (``distill.losses.LOSSES``) and its settings."""

    name: LossName = Field("forward_kl", description="KD divergence (registry distill.losses)")
    temperature: float = Field(1.0, gt=0, le=20, description="softens both sides; loss × T²")
    beta: float = Field(0.5, gt=0, lt=1, description="β of the generalized JSD (loss: jsd)")
    skew: float = Field(0.1, gt=0, lt=1, description="α of skew_forward_kl / skew_reverse_kl")

    def param(self) -> float | None:
        if self.name == "jsd":
            return self.beta
        if self.name.startswith("skew_"):
            return self.skew
        return None


class KDLossConfig(DivergenceConfig):
    alpha: float = Field(0.0, ge=0, description="weight of the hard-label cross-entropy")
    kd_weight: float = Field(1.0, ge=0, description="weight of the KD term")


class OnPolicyConfig(StrictModel):
    """On-policy distillation (GKD, arXiv 2306.13649): on a share ``lmbda`` of the steps the
    student samples completions of prompts cut from that step's train rows, the live teacher
    scores prompt + completion in one forward, and the loss counts the generated positions only.
    The other steps train on the store / corpus rows as usual."""

    lmbda: float = Field(
        0.0, description="share of optimizer steps that are on-policy, in [0, 1]; 0 = off"
    )
    max_new_tokens: int = Field(32, ge=1, le=4096, description="tokens sampled per prompt")
    temperature: float = Field(1.0, gt=0, le=10, description="the student's sampling temperature")
    prompt_tokens: int = Field(
        64, ge=1, description="prompt = the first N tokens of each of the step's train rows"
    )
    loss: DivergenceConfig | None = Field(
        None,
        description="divergence of the on-policy steps (full teacher logits: any registry loss "
        "at any temperature); unset = distill.loss's. No CE term: the targets are the "
        "student's own samples",
    )

    @field_validator("lmbda")
    @classmethod
    def _lmbda(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(
                f"distill.on_policy.lmbda must be in [0, 1] (the share of on-policy steps), got {v}"
            )
        return v


class TeacherActorConfig(StrictModel):
    """The live teacher as a Ray actor (``teacher_placement: actor``), one per node."""

    num_cpus: float = Field(
        0.0, ge=0, description="Ray CPUs reserved; 0 = shares the workers' (they wait on it)"
    )
    num_gpus: float = Field(0.0, ge=0, description="GPUs for the teacher (e.g. 1, or 0.5)")
    threads: int | None = Field(
        None, ge=1, description="torch threads in the actor; unset = distill.cpus_per_worker"
    )
    max_restarts: int = Field(
        1, ge=0, description="Ray restarts of a dead teacher actor (calls in flight are retried)"
    )


class FeatureLossConfig(StrictModel):
    weight: float = Field(0.0, ge=0, description="γ; 0 = off. Needs mode: online")
    pairs: list[tuple[int, int]] = Field(
        default_factory=list, description="(teacher layer, student layer), 0-based decoder layers"
    )
    kind: Literal["mse", "cosine"] = "mse"


class AttentionLossConfig(StrictModel):
    weight: float = Field(0.0, ge=0, description="δ; 0 = off. Needs mode: online (eager attn)")
    pairs: list[tuple[int, int]] = Field(
        default_factory=list, description="(teacher layer, student layer), 0-based decoder layers"
    )
    kind: Literal["mse", "kl", "cosine"] = "kl"


class DistillConfig(StrictModel):
    """Knowledge distillation on Ray Train + DeepSpeed (``distill.train.stage.run``)."""

    mode: Literal["offline", "online", "sft"] = Field(
        "offline",
        description="offline: soft-label store (artifacts.soft_labels); online: teacher; "
        "sft: no teacher, cross-entropy on pre-masked labels (LoopSpec.sft_path; loss ignored)",
    )
    loss: KDLossConfig = Field(default_factory=KDLossConfig)
    on_policy: OnPolicyConfig = Field(default_factory=OnPolicyConfig)
    teacher_placement: Literal["worker", "actor"] = Field(
        "worker",
        description="where the live teacher (online / on-policy scoring) runs: a copy in each "
        "training worker, or one Ray actor per node serving every worker on it",
    )
    teacher_actor: TeacherActorConfig = Field(default_factory=TeacherActorConfig)
    feature: FeatureLossConfig = Field(default_factory=FeatureLossConfig)
    attention: AttentionLossConfig = Field(default_factory=AttentionLossConfig)
    zero_stage: Literal[0, 1, 2, 3] = Field(
        2, description="DeepSpeed ZeRO stage; 0 = plain data parallel (one CPU worker needs none)"
    )
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one DeepSpeed rank each)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(
        1.0, gt=0, description="Ray CPUs reserved per worker (= its torch threads on CPU)"
    )
    batch_size: int = Field(4, ge=1, description="rows per worker per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW (β1, β2)")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, description="linear warmup, then cosine decay to min_lr")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr as a fraction of lr")
    shuffle: bool = Field(
        True, description="visit rows in a seeded random order per epoch (resume stays exact)"
    )
    loss_chunk: int = Field(
        256,
        ge=0,
        description="positions per chunk of the fused LM-head loss (full [B, L, V] logits are "
        "never held); 0 = materialize the logits (the unfused reference path)",
    )
    freeze_embeddings: bool = Field(
        False, description="keep the input embedding / tied LM head fixed (not trained)"
    )
    max_steps: int | None = Field(50, ge=1, description="optimizer steps; with max_tokens: min")
    max_tokens: int | None = Field(None, ge=1, description="training-token budget")
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="training-clock budget: the run ends (and exports) after the step that "
        "reaches it, even before max_steps; the LR schedule still spans max_steps",
    )
    clip: float = Field(1.0, ge=0, description="gradient-norm clipping; 0 = off")
    eval_every: int = Field(0, ge=0, description="held-out eval every N steps; 0 = at end only")
    eval_rows: int = Field(32, ge=1, description="held-out rows per evaluation")
    checkpoint_every: int = Field(0, ge=0, description="Ray checkpoint every N steps; 0 = end")
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last checkpoint")
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto = bfloat16 on GPU, float32 on CPU"
    )
    storage_path: str | None = Field(
        None,
        description="Ray Train checkpoints: a path or a pyarrow URI (file://, s3://, gs://); "
        "unset = <workdir>/ray_results. More than one node needs storage they all reach",
    )

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.max_steps is None and self.max_tokens is None:
            raise ValueError("set max_steps and/or max_tokens (the training budget)")
        for name, sec in (("feature", self.feature), ("attention", self.attention)):
            if sec.weight > 0:
                if self.mode != "online":
                    raise ValueError(
                        f"distill.{name}.weight > 0 needs mode: online (a live teacher); "
                        "offline soft labels hold only top-k logits"
                    )
                if not sec.pairs:
                    raise ValueError(
                        f"distill.{name}.pairs is empty: list (teacher, student) pairs"
                    )
                if self.zero_stage == 3:
                    raise ValueError(
                        f"distill.{name} losses are supported with zero_stage 1 or 2, not 3 "
                        "(the projections/attention maps are not gathered under ZeRO-3)"
                    )
        if (
            self.mode != "sft"
            and self.loss.alpha == 0
            and self.loss.kd_weight == 0
            and not (self.feature.weight or self.attention.weight)
        ):
            raise ValueError("every loss weight is 0: set loss.alpha and/or loss.kd_weight")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"distill.betas must be in [0, 1), got {list(self.betas)}")
        if self.on_policy.lmbda > 0:
            if self.mode == "sft":
                raise ValueError("distill.on_policy is for mode offline or online, not sft")
            if self.loss.kd_weight == 0:
                raise ValueError(
                    "distill.on_policy.lmbda > 0 with loss.kd_weight 0: the on-policy steps' loss "
                    "is kd_weight × the divergence; set loss.kd_weight > 0"
                )
            if self.zero_stage == 3:
                raise ValueError(
                    "distill.on_policy needs zero_stage 0, 1 or 2: the student samples with its "
                    "whole weights on each rank (ZeRO-3 partitions them)"
                )
        if self.teacher_placement == "actor" and (self.feature.weight or self.attention.weight):
            raise ValueError(
                "distill.teacher_placement: actor serves the teacher's logits only; feature / "
                "attention losses need teacher_placement: worker"
            )
        if self.dtype == "bfloat16" and not self.use_gpu:
            raise ValueError("dtype bfloat16 is for use_gpu: true; on CPU use float32 (or auto)")
        return self

    @property
    def needs_teacher(self) -> bool:
        """A live teacher is loaded: online mode, or on-policy steps (any mode)."""
        return self.mode == "online" or self.on_policy.lmbda > 0

    def on_policy_divergence(self) -> DivergenceConfig:
        return self.on_policy.loss or DivergenceConfig(
            **self.loss.model_dump(include={"name", "temperature", "beta", "skew"})
        )

    def loss_weights(self) -> tuple[float, float]:
        """``(ce, kd)`` weights the loop uses: sft mode is plain cross-entropy (1, 0)."""
        if self.mode == "sft":
            return 1.0, 0.0
        return self.loss.alpha, self.loss.kd_weight

    @property
    def compute_dtype(self) -> str:
        if self.dtype == "auto":
            return "bfloat16" if self.use_gpu else "float32"
        return self.dtype

    def total_steps(self, seq_len: int) -> int:
        """Optimizer steps the budget allows: ``min(max_steps, ceil(max_tokens / tokens/step))``."""
        steps = []
        if self.max_steps is not None:
            steps.append(self.max_steps)
        if self.max_tokens is not None:
            steps.append(math.ceil(self.max_tokens / self.tokens_per_step(seq_len)))
        return min(steps)

    def tokens_per_step(self, seq_len: int) -> int:
        return self.batch_size * self.num_workers * self.grad_accum * seq_len


def check_offline_objective(cfg: DistillConfig, encoding: str) -> None:
    """Refuse offline objectives the stored target cannot give without bias."""
    if not cfg.loss.kd_weight:
        return
    if cfg.loss.temperature != 1.0:
        raise DistillError(
            f"distill.loss.temperature={cfg.loss.temperature:g} with an offline {encoding} store: "
            "the store holds the teacher at T=1 only (a top-k target would be conditioned on "
            "the top-k support, so the student's mass outside it gets no gradient). Set "
            "distill.loss.temperature: 1.0, or use distill.mode: online for T != 1"
        )
    if encoding == "sampled" and cfg.loss.name != "forward_kl":
        raise DistillError(
            f"distill.loss.name={cfg.loss.name!r} with a sampled soft-label store: only "
            "forward_kl has an unbiased estimate from sampled tokens (the others need the "
            "teacher's probabilities outside the samples). Use loss.name: forward_kl, "
            "soft_labels.encoding: topk, or distill.mode: online"
        )

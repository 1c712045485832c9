"""Settings of the ``quantize`` stage (``quantize:`` section of a pipeline YAML).

    distill run pipelines/configs/smollm2.yaml --set quantize.group_size=32 --set quantize.bits=4

Checks that need the model (does ``group_size`` divide every linear layer's ``in_features``?)
run in :func:`distill.quant.validate.check_model_dir`, still before any quantization work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.config.base import StrictModel
from distill.runtime.config import EngineConfig, GGUFQuant
from distill.train.config import KDLossConfig

# Bits the GPTQ checkpoint format and GPT-QModel's torch kernels support (CPU and CUDA).
SUPPORTED_BITS = (2, 3, 4, 8)

Backend = Literal["auto", "torch", "torch_aten", "triton", "exllama_v2", "marlin"]


class RecoverConfig(StrictModel):
    """Quantization-aware distillation after GPTQ: the int4 model (weights fake-quantized on its
    own grid, straight-through estimator; scales, norms and latent weights trainable) trained
    through the distill stage's Ray Train + DeepSpeed loop against the teacher's soft-label store
    or against the fp model it was quantized from, then packed again. ``steps: 0`` = off."""

    steps: int = Field(0, ge=0, description="optimizer steps; 0 = no recovery")
    target: Literal["soft_labels", "fp"] = Field(
        "soft_labels",
        description="soft_labels: the teacher's store (offline KD); fp: the fp model the GPTQ "
        "checkpoint came from, run live on the train rows (self-distillation; no store needed)",
    )
    lr: float = Field(1e-5, gt=0, description="peak learning rate (latent weights are ~1e-2)")
    warmup_steps: int = Field(2, ge=0)
    batch_size: int = Field(2, ge=1, description="rows per worker per step")
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    zero_stage: Literal[0, 1, 2] = Field(2, description="ZeRO stage (3 would shard the int4 grid)")
    loss: KDLossConfig = Field(default_factory=lambda: KDLossConfig(alpha=0.0))
    freeze_embeddings: bool = Field(
        True,
        description="keep the embedding / LM head as GPTQ left them (the engine quantizes "
        "them separately)",
    )
    eval_rows: int = Field(16, ge=1, description="held-out rows of the loop's final evaluation")


class QuantizeConfig(StrictModel):
    """Weight-only post-training quantization of the latest model (GPTQ via GPT-QModel, or RTN)."""

    method: Literal["gptq", "rtn"] = Field(
        "gptq",
        description="gptq: error-compensating GPTQ on calibration rows; rtn: round-to-nearest "
        "(no calibration), saved in the same GPTQ checkpoint format",
    )
    bits: int = Field(4, description=f"weight bits, one of {list(SUPPORTED_BITS)}")
    group_size: int = Field(
        64,
        description="weights per quantization group along in_features: -1 (per channel) or a "
        "power of two that divides every linear layer's in_features",
    )
    desc_act: bool = Field(False, description="quantize columns by decreasing activation order")
    act_group_aware: bool | None = Field(
        None,
        description="group-aware activation reordering (GAR; GPT-QModel's default for GPTQ when "
        "desc_act is off); None = GPT-QModel's default",
    )
    mse: float = Field(
        0.0, ge=0.0, description="> 0: search each group's scale minimizing the L^mse error (2.4)"
    )
    v2_alpha: float | None = Field(
        None,
        gt=0.0,
        description="GPTQ v2 (GPTAQ: asymmetric calibration against the fp layer inputs) with "
        "this alpha (0.25 recommended); None = GPTQ v1",
    )
    sym: bool = Field(True, description="symmetric quantization (no zero point)")
    damp_percent: float = Field(
        0.01, gt=0.0, lt=1.0, description="GPTQ Hessian dampening, fraction of the mean diagonal"
    )
    calib_rows: int = Field(16, ge=1, description="calibration samples from the TRAIN split")
    calib_source: Literal["train", "teacher"] = Field(
        "train",
        description="train: the TRAIN split's rows; teacher: a train row's first calib_prefix "
        "tokens continued by the teacher's own samples (text from the distribution the student "
        "was distilled towards; costs one batched teacher generation)",
    )
    calib_prefix: int = Field(
        32, ge=1, description="calib_source teacher: train tokens that start each sample"
    )
    calib_seq_len: int = Field(
        256, ge=8, description="tokens per calibration sample (train rows are re-chunked)"
    )
    batch_size: int = Field(4, ge=1, description="calibration forward batch size")
    backend: Backend = Field(
        "auto", description="inference kernel when loading the int4 model (auto = best available)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where quantization runs: auto = cuda if available, else cpu"
    )
    pack_impl: Literal["original", "block"] = Field(
        "original",
        description="int4 packing: original (pure torch, no compile step) or block (GPT-QModel's "
        "C++ packer: JIT-compiles ~70 s on a machine's first use, cached in ~/.cache/gptqmodel)",
    )
    compare_rtn: bool = Field(
        True, description="also measure a round-to-nearest baseline at the same bits/group size"
    )
    eval_rows: int | None = Field(
        32, ge=1, description="held-out rows for the before/after metrics (None = all)"
    )
    eval_batch_size: int = Field(4, ge=1, description="batch size of the held-out evaluation")
    recover: RecoverConfig = Field(
        default_factory=RecoverConfig,
        description="quantization-aware distillation of the GPTQ result (needs soft_labels)",
    )
    engine: EngineConfig = Field(
        default_factory=EngineConfig,
        description="export to a CPU int4 runtime (ONNX Runtime GenAI) beside the GPTQ checkpoint",
    )
    gguf: list[GGUFQuant] = Field(
        default_factory=list,
        description="also export the fp model (the stage's source: the student) to GGUF for "
        "llama.cpp / Ollama at these quantizations, in student-gguf/ (q4_k_m needs llama.cpp's "
        "llama-quantize: bash benchmarks/build_llamacpp.sh)",
    )

    @field_validator("gguf")
    @classmethod
    def _gguf(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"gguf={v} lists a quantization twice")
        return v

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if v not in SUPPORTED_BITS:
            raise ValueError(f"bits={v} is not supported; allowed: {list(SUPPORTED_BITS)}")
        return v

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v == -1:
            return v
        if v < 8 or v & (v - 1):
            raise ValueError(
                f"group_size={v} is not allowed; use -1 (per channel) or a power of two >= 8 "
                "(e.g. 32, 64, 128) that divides every linear layer's in_features"
            )
        return v

    @model_validator(mode="after")
    def _recover(self) -> QuantizeConfig:
        if self.recover.steps and (self.method != "gptq" or self.group_size == -1):
            raise ValueError(
                "recover.steps > 0 trains the GPTQ checkpoint's int4 grid: needs method: gptq "
                "and a group_size"
            )
        return self

    @model_validator(mode="after")
    def _calib(self) -> QuantizeConfig:
        if self.calib_source == "teacher" and self.calib_prefix >= self.calib_seq_len:
            raise ValueError(
                f"calib_prefix ({self.calib_prefix}) must be shorter than calib_seq_len "
                f"({self.calib_seq_len}): the teacher continues each prefix to calib_seq_len"
            )
        return self

    @model_validator(mode="after")
    def _ordering(self) -> QuantizeConfig:
        if self.desc_act and self.act_group_aware:
            raise ValueError("act_group_aware: true needs desc_act: false (they are exclusive)")
        return self

    @model_validator(mode="after")
    def _engine(self) -> QuantizeConfig:
        e = self.engine
        if e.kind != "none" and e.source == "gptq":
            if self.method != "gptq" or self.bits != 4 or not self.sym:
                raise ValueError(
                    "engine.source: gptq carries 4-bit symmetric GPTQ weights into the engine; "
                    f"got method={self.method} bits={self.bits} sym={self.sym}: use those or "
                    "engine.source: fp"
                )
            if self.group_size == -1:
                raise ValueError("engine.source: gptq needs a group_size (the engine is blockwise)")
        return self

    @model_validator(mode="after")
    def _cuda_backends(self) -> QuantizeConfig:
        if self.device == "cpu" and self.backend in ("triton", "exllama_v2", "marlin"):
            raise ValueError(
                f"backend={self.backend!r} needs CUDA but device='cpu'; "
                "use backend 'auto', 'torch' or 'torch_aten' on CPU"
            )
        return self


class TeacherInt4Config(StrictModel):
    """The quantized teacher (stage ``teacher_int4``): what a user gets without pruning or KD,
    made by the same quantize path as the student, scored by ``evaluate`` beside it and a
    candidate of the release gate. Enabled, it runs before ``evaluate`` whenever a pipeline has
    both ``quantize`` and ``evaluate`` (listed or not); its output is keyed on the teacher, the
    corpus and these settings alone, so a new student reuses it.

    ``gptq_engine``: a second export, the teacher's GPTQ checkpoint in the engine format of the
    student's ``int4_cpu`` (output ``teacher_int4_gptq_cpu``), for when ``quantize.engine`` here
    makes a different format (the GGUF's own Q4_1 grid: best quality, slower decode). Same
    format, same engine: its speed ratio to ``int4_cpu`` is what pruning and KD bought."""

    enabled: bool = True
    quantize: QuantizeConfig | None = Field(
        None,
        description="quantization settings for the teacher; unset = the pipeline's quantize "
        "section (filled in when the config is loaded)",
    )
    gptq_engine: EngineConfig | None = Field(
        None,
        description="engine export of the teacher's GPTQ checkpoint (teacher_int4_gptq_cpu); "
        "unset = the pipeline's quantize.engine when that carries GPTQ weights and differs from "
        "teacher_int4.quantize.engine, else none (filled in when the config is loaded)",
    )

    @model_validator(mode="after")
    def _gptq_engine(self) -> TeacherInt4Config:
        e, q = self.gptq_engine, self.quantize
        if e is None or e.kind == "none":
            return self
        if e.source != "gptq":
            raise ValueError(
                "teacher_int4.gptq_engine exports the teacher's GPTQ checkpoint: set its "
                f"source: gptq (got {e.source}), or kind: none"
            )
        if q is not None:  # the GPTQ settings must suit the engine, as for the student
            QuantizeConfig.model_validate({**q.model_dump(), "engine": e.model_dump()})
        return self

"""GPT-QModel adapter: quantize an HF checkpoint on calibration rows, and load the result.

    out = quantize(Path("runs/smoke/student"), QuantizeConfig(), calib_rows, Path("runs/x/int4"))
    model = load_quantized(out)              # ready for generate on CPU (int4 kernel) or CUDA

The data stays with the caller: ``calibration`` is token-id rows (``[n, seq_len]`` ints), which
the stage layer takes from the TRAIN split. The checkpoint is written to a temp directory next to
``out_dir`` and renamed when whole. It loads with ``GPTQModel.load`` and, with ``optimum``
installed, with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from distill.atomic import atomic_dir
from distill.config.base import DistillError
from distill.models.files import copy_tokenizer_files
from distill.quant.config import QuantizeConfig
from distill.quant.validate import check_backend_supports, check_group_size, check_model_dir

_BACKENDS = {
    "auto": "AUTO",
    "torch": "GPTQ_TORCH",
    "torch_aten": "GPTQ_TORCH_ATEN",
    "triton": "GPTQ_TRITON",
    "exllama_v2": "GPTQ_EXLLAMA_V2",
    "marlin": "GPTQ_MARLIN",
}


def prepare_env() -> None:
    """Environment GPT-QModel needs before import (its CPU pool asks for 2 workers)."""
    if (os.cpu_count() or 1) <= 2:
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DistillError("quantize.device='cuda' but no CUDA device is visible; use 'auto'")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX); without it bf16 matmuls
    are emulated: int4 forwards ran 1.2-1.8x slower than in fp32 on an AVX2 EPYC (teacher-
    and student-sized SmolLM2)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_dtype() -> str:
    """The activation dtype ``load_quantized`` picks on this CPU."""
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def calibration_samples(rows: np.ndarray, n: int, seq_len: int) -> list[dict[str, list[int]]]:
    """``n`` samples of ``seq_len`` tokens from packed rows (rows are contiguous, so they are
    flattened and re-chunked); fewer when the rows hold fewer tokens. Raises on none."""
    flat = np.asarray(rows).reshape(-1)
    count = min(n, len(flat) // seq_len)
    if count == 0:
        raise DistillError(
            f"empty calibration set: {len(flat)} train tokens cannot fill one sample of "
            f"quantize.calib_seq_len={seq_len}; lower calib_seq_len or add corpus data"
        )
    chunks = flat[: count * seq_len].reshape(count, seq_len)
    return [{"input_ids": r.tolist(), "attention_mask": [1] * seq_len} for r in chunks]


def gptqmodel_config(cfg: QuantizeConfig):
    """The GPT-QModel ``QuantizeConfig`` for our settings (GPTQ or weight-only RTN)."""
    prepare_env()
    from gptqmodel import QuantizeConfig as GQConfig

    pack = "cpu" if cfg.pack_impl == "block" else "original"
    common = dict(
        bits=cfg.bits,
        group_size=cfg.group_size,
        sym=cfg.sym,
        offload_to_disk=False,
        pack_impl=pack,
    )
    if cfg.method == "rtn":
        from gptqmodel.quantization.config import WeightOnlyConfig

        return GQConfig(**common, weight_only=WeightOnlyConfig(method="rtn"))
    extra: dict = {"mse": cfg.mse}
    if cfg.act_group_aware is not None:
        extra["act_group_aware"] = cfg.act_group_aware
    elif cfg.desc_act:
        extra["act_group_aware"] = False  # GPT-QModel would warn and turn it off itself
    if cfg.v2_alpha is not None:
        from gptqmodel.quantization.config import GPTAQConfig

        extra["gptaq"] = GPTAQConfig(alpha=cfg.v2_alpha, device="cpu")
    return GQConfig(**common, desc_act=cfg.desc_act, damp_percent=cfg.damp_percent, **extra)


def validate(model_dir: Path, cfg: QuantizeConfig) -> dict[str, int]:
    """Every check that can fail, before any work: model kind, architecture, group size."""
    in_features = check_model_dir(model_dir)
    check_group_size(cfg.group_size, in_features)
    prepare_env()
    check_backend_supports(model_dir)
    return in_features


def quantize(
    model_dir: Path,
    cfg: QuantizeConfig,
    calibration: np.ndarray | Sequence[Sequence[int]],
    out_dir: Path,
    on_layer: Callable[[int], None] | None = None,
) -> Path:
    """Quantize ``model_dir`` with GPT-QModel into ``out_dir`` (temp dir + rename); returns it.

    ``calibration``: token-id rows (any lengths >= ``cfg.calib_seq_len`` in total); ignored
    for ``method: rtn``. ``on_layer(i)``: told when GPT-QModel has quantized decoder layer ``i``
    (its layer-complete callback; the stage's progress bar).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    validate(model_dir, cfg)
    samples: list[dict[str, list[int]]] = []
    if cfg.method == "gptq":
        if isinstance(calibration, np.ndarray):
            flat = calibration.reshape(-1)
        else:  # rows of possibly different lengths
            flat = np.concatenate(
                [np.asarray(r, np.int64).reshape(-1) for r in calibration] or [[]]
            )
        samples = calibration_samples(flat.astype(np.int64), cfg.calib_rows, cfg.calib_seq_len)

    from gptqmodel import GPTQModel

    device = resolve_device(cfg.device)
    qmodel = GPTQModel.load(str(model_dir), gptqmodel_config(cfg), device=device)
    if on_layer is not None:

        def layer_complete(layer_idx: int, submodule_finalized: bool) -> None:
            if not submodule_finalized:
                on_layer(int(layer_idx))

        qmodel.layer_callback = layer_complete
    if cfg.method == "gptq":
        qmodel.quantize(samples, batch_size=cfg.batch_size)
    else:
        qmodel.quantize(None, batch_size=cfg.batch_size)

    with atomic_dir(out_dir) as tmp:
        qmodel.save(str(tmp))
        copy_tokenizer_files(model_dir, tmp)
    return out_dir


def load_quantized(
    path: Path, device: str = "auto", backend: str = "auto", dtype: str | None = None
):
    """A GPTQ checkpoint as a transformers model in eval mode, ready for ``generate``.

    Loads through ``GPTQModel.load`` (which picks the int4 kernel: TorchAten on CPU); ``dtype``
    None: on CPU bfloat16 where the CPU has native bf16, else float32 (GPT-QModel alone would
    pick bfloat16 everywhere); on CUDA GPT-QModel chooses. Used by ``evaluate`` and ``serve``::

        model = load_quantized(Path("runs/smoke/student-int4"), device="cpu")
        model.generate(input_ids, max_new_tokens=16)
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise DistillError(f"not a model checkpoint (no config.json): {path}")
    if backend not in _BACKENDS:
        raise DistillError(f"unknown backend {backend!r}; allowed: {sorted(_BACKENDS)}")
    prepare_env()
    import torch
    from gptqmodel import BACKEND, GPTQModel

    device = resolve_device(device)
    if dtype is None and device == "cpu":
        dtype = cpu_dtype()
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    qmodel = GPTQModel.load(
        str(path),
        device=device,
        backend=getattr(BACKEND, _BACKENDS[backend]),
        **kwargs,
    )
    return qmodel.model.eval()

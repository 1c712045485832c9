"""Export a Llama-architecture HF checkpoint (a distill student or teacher) to GGUF, the format of
llama.cpp, Ollama and LM Studio::

    distill export --format gguf --quant q8_0 runs/smollm2/student runs/smollm2/student-q8_0.gguf
    export_gguf(Path("runs/smollm2/student"), Path("/tmp/student-f16.gguf"), "f16")

``f32``, ``f16`` and ``q8_0`` are written here with the ``gguf`` package (1-D tensors stay f32, as
llama.cpp's own converter leaves them); ``q4_k_m`` writes an f32 GGUF and runs llama.cpp's
``llama-quantize`` on it (found by :mod:`distill.runtime.llamacpp`, refused when absent).

The tensors follow llama.cpp's ``llama`` layout: names from ``gguf.TensorNameMap``, and the q/k
projections permuted from HF's rotate-half RoPE to llama.cpp's interleaved pairs (transformers
undoes the permutation when it loads a GGUF). The tokenizer goes in as ``gpt2`` BPE (tokens,
types, merges, special ids, ``add_bos``, chat template) with the pre-tokenizer that reproduces the
checkpoint's ``tokenizer.json``, so llama.cpp splits text the way distill's tokenizer does.
What the writer cannot represent exactly (another architecture, RoPE scaling, biases, a
tokenizer other than byte-level BPE) is refused by :func:`check_checkpoint` before any work.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from distill.config.base import DistillError
from distill.runtime.config import GGUF_QUANTS
from distill.runtime.llamacpp import find_tool, quantize_gguf

# quantizations llama-quantize makes from an f32 GGUF (its ftype names)
LLAMA_QUANTIZE_FTYPES = {"q4_k_m": "Q4_K_M"}


def _config(model_dir: Path) -> dict:
    f = Path(model_dir) / "config.json"
    if not f.is_file():
        raise DistillError(f"GGUF export: {f} not found (an HF checkpoint directory is needed)")
    return json.loads(f.read_text())


def rope_theta(cfg: dict) -> float:
    rp = cfg.get("rope_parameters") or {}
    return float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def pre_tokenizer_name(tok: dict, where: Path) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` whose split equals ``tokenizer.json``'s pre-tokenizer."""
    pre = tok.get("pre_tokenizer") or {}

    def byte_level(p: dict) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True)

    if byte_level(pre):
        return "gpt-2"  # ByteLevel's own regex is GPT-2's
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (
        len(steps) == 2
        and steps[0].get("type") == "Digits"
        and steps[0].get("individual_digits")
        and byte_level(steps[1])
    ):
        return "smollm"  # single digits, then GPT-2's regex
    raise DistillError(
        f"GGUF export: {where}: tokenizer.json pre_tokenizer {json.dumps(pre)[:200]} is not one "
        "the writer maps to llama.cpp (ByteLevel, or Digits(individual) + ByteLevel)"
    )


def check_checkpoint(model_dir: Path) -> None:
    """Refuse, before any work, a checkpoint the writer cannot export exactly (names the field)."""
    model_dir = Path(model_dir)
    cfg = _config(model_dir)
    where = model_dir / "config.json"
    if cfg.get("model_type") != "llama":
        raise DistillError(
            f"GGUF export supports the Llama architecture only; {where} has model_type="
            f"{cfg.get('model_type')!r} (architectures={cfg.get('architectures')})"
        )
    if cfg.get("quantization_config"):
        raise DistillError(
            f"GGUF export needs an fp checkpoint; {where} has quantization_config "
            f"({cfg['quantization_config'].get('quant_method')}): export the fp student (GGUF has "
            "its own quantizations: --quant q8_0 | q4_k_m)"
        )
    rp = cfg.get("rope_parameters") or {}
    if cfg.get("rope_scaling") or rp.get("rope_type", "default") != "default":
        raise DistillError(
            f"GGUF export: {where} uses RoPE scaling ({cfg.get('rope_scaling') or rp}); the "
            "writer supports rope_type 'default' only"
        )
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise DistillError(
                f"GGUF export: {where} has {key}=true; the writer has no bias tensors"
            )
    if cfg.get("hidden_act", "silu") != "silu":
        raise DistillError(
            f"GGUF export: {where} hidden_act={cfg['hidden_act']!r}; llama needs silu"
        )
    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise DistillError(f"GGUF export: {tok_file} not found (a fast tokenizer is needed)")
    tok = json.loads(tok_file.read_text())
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise DistillError(
            f"GGUF export: {tok_file} model.type={model.get('type')!r}"
            f"{' with byte_fallback' if model.get('byte_fallback') else ''}; the writer exports "
            "byte-level BPE tokenizers (gpt2) only"
        )
    pre_tokenizer_name(tok, tok_file)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows -> llama.cpp interleaved RoPE pairs (per head), as its converter does."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tokenizer(writer, model_dir: Path, n_vocab: int) -> None:
    import gguf

    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    added = {t["content"]: t for t in tok.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    by_id = {i: s for s, i in vocab.items()}
    if max(by_id) >= n_vocab:
        raise DistillError(
            f"GGUF export: {model_dir}: the tokenizer has id {max(by_id)} but the model's "
            f"vocab_size is {n_vocab}"
        )
    tokens, types = [], []
    for i in range(n_vocab):
        s = by_id.get(i)
        if s is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif s in added:
            tokens.append(s)
            types.append(
                gguf.TokenType.CONTROL if added[s].get("special") else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(s)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tok, model_dir / "tokenizer.json"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    cfg = json.loads(f.read_text()) if (f := model_dir / "tokenizer_config.json").is_file() else {}
    special.add_special_token.setdefault("bos", bool(cfg.get("add_bos_token", False)))
    special.add_to_gguf(writer, quiet=True)


def _tensors(model_dir: Path):
    """``(name, float32 array)`` of every weight in the checkpoint's safetensors files."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise DistillError(f"GGUF export: no *.safetensors in {model_dir}")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                yield name, st.get_tensor(name).float().numpy()


def _tensor_type(name: str, arr: np.ndarray, quant: str):
    import gguf

    q = gguf.GGMLQuantizationType
    if arr.ndim == 1 or quant == "f32":
        return q.F32
    if quant == "f16":
        return q.F16
    block = gguf.GGML_QUANT_SIZES[q.Q8_0][0]
    return q.Q8_0 if arr.shape[-1] % block == 0 else q.F16


def write_gguf(model_dir: Path, out: Path, quant: str, name: str | None = None) -> Path:
    """Write ``out`` (f32 | f16 | q8_0) from the HF checkpoint ``model_dir`` (temp file + rename)."""
    import gguf

    model_dir, out = Path(model_dir), Path(out)
    check_checkpoint(model_dir)
    cfg = _config(model_dir)
    n_head, n_kv = (
        cfg["num_attention_heads"],
        cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
    )
    hidden, n_layer = cfg["hidden_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[quant]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.tmp-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        w.add_name(name or model_dir.name)
        w.add_context_length(cfg.get("max_position_embeddings", 2048))
        w.add_embedding_length(hidden)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_dimension_count(head_dim)
        if head_dim * n_head != hidden:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_rope_freq_base(rope_theta(cfg))
        w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
        w.add_vocab_size(cfg["vocab_size"])
        w.add_file_type(ftype)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _tokenizer(w, model_dir, cfg["vocab_size"])

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
        tied = cfg.get("tie_word_embeddings", False)
        for hf_name, arr in _tensors(model_dir):
            if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
                continue
            new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise DistillError(f"GGUF export: {model_dir}: no llama tensor for {hf_name!r}")
            if hf_name.endswith("q_proj.weight"):
                arr = permute_qk(arr, n_head)
            elif hf_name.endswith("k_proj.weight"):
                arr = permute_qk(arr, n_kv)
            qtype = _tensor_type(new, arr, quant)
            data = gguf.quants.quantize(np.ascontiguousarray(arr), qtype)
            w.add_tensor(new, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp made it 0600; the export is an ordinary file
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def preflight(model_dir: Path, quants: list[str], field: str = "quantize.gguf") -> None:
    """What a pipeline's GGUF export would refuse, raised before the stage's work (names ``field``)."""

    try:
        check_checkpoint(model_dir)
        if any(q in LLAMA_QUANTIZE_FTYPES for q in quants):
            find_tool("llama-quantize")
    except DistillError as e:
        raise DistillError(f"{field}={list(quants)}: {e}") from None


def export_gguf(
    model_dir: Path, out: Path, quant: str, name: str | None = None, threads: int | None = None
) -> Path:
    """GGUF of ``model_dir`` at ``quant`` (one of ``GGUF_QUANTS``) in ``out``; returns ``out``.

    ``q4_k_m`` needs llama.cpp's ``llama-quantize``: it is looked up before any work."""

    if quant not in GGUF_QUANTS:
        raise DistillError(f"GGUF export: quant {quant!r} is not one of {list(GGUF_QUANTS)}")
    check_checkpoint(model_dir)
    if quant not in LLAMA_QUANTIZE_FTYPES:
        return write_gguf(model_dir, out, quant, name)
    find_tool("llama-quantize")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        f32 = write_gguf(model_dir, Path(tmp) / "f32.gguf", "f32", name)
        part = Path(tmp) / "quantized.gguf"
        quantize_gguf(f32, part, LLAMA_QUANTIZE_FTYPES[quant], threads)
        part.replace(out)
    return out

"""int8 tied embedding + LM head in an ONNX Runtime GenAI export (``engine.embedding_bits: 8``).

The model builder shares the input embedding with the LM head only at 4 bits; with an int8 head it
keeps the embedding in fp32 (untied, larger). This post-processing of the builder's output (built
with ``last_matmul:int8`` and ``shared_embeddings=false``) quantizes the head symmetric int8 per
block (``scale = absmax / 127``, zero point 128), looks the embedding up in the same initializers
with ``GatherBlockQuantized(bits=8)`` and drops the fp32 embedding, so a tied model stays tied at
the head's precision::

    with edit_model(Path("runs/x/student-int4-cpu")) as model:      # distill.runtime.graph
        tie_int8_embedding(model, tied=True, block_size=32)

An untied model gets its own int8 embedding; its head stays as the builder quantized it. Symmetric
absmax int8 on a block of 32 reproduces a GGUF ``Q8_0`` block exactly (the packaged SmolLM2's
embedding). :func:`quantize_int8` / :func:`dequantize_int8` are the grid, for references in tests.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from distill.config.base import DistillError
from distill.runtime.graph import attributes

ZERO = 128  # symmetric uint8 grid: code 128 is 0.0 (the ops' default zero point for 8 bits)
SETTING = "quantize.engine.embedding_bits"


def quantize_int8(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``w`` [n, k] → codes uint8 [n, k] (``round(w / s) + 128``) and scales fp32 [n, k/block]."""
    n, k = w.shape
    if k % block_size:
        raise DistillError(
            f"quantize.engine.lm_head_block_size={block_size} does not divide the hidden size "
            f"{k}; use a block size that does (16, 32, 64, ...)"
        )
    blocks = np.asarray(w, np.float32).reshape(n, k // block_size, block_size)
    scales = np.abs(blocks).max(-1) / 127.0
    safe = np.where(scales == 0, 1.0, scales).astype(np.float32)
    codes = np.clip(np.rint(blocks / safe[..., None]), -127, 127) + ZERO
    return codes.astype(np.uint8).reshape(n, k), scales.astype(np.float32)


def dequantize_int8(codes: np.ndarray, scales: np.ndarray, block_size: int) -> np.ndarray:
    """Inverse grid of :func:`quantize_int8`: ``(codes - 128) * scale`` per block, fp32."""
    n, k = codes.shape
    c = codes.astype(np.float32).reshape(n, k // block_size, block_size) - ZERO
    return (c * scales[..., None]).reshape(n, k)


@lru_cache(maxsize=1)
def _gather_int8_error() -> str | None:
    """Run a one-node ``GatherBlockQuantized(bits=8)`` graph on the CPU; the error text or None."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    codes, scales = quantize_int8(np.arange(64, dtype=np.float32).reshape(2, 32) - 31, 16)
    node = helper.make_node(
        "GatherBlockQuantized",
        ["data", "ids", "scales"],
        ["y"],
        domain="com.microsoft",
        bits=8,
        block_size=16,
        gather_axis=0,
        quantize_axis=1,
    )
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(codes, "data"), numpy_helper.from_array(scales, "scales")],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"ids": np.array([1], np.int64)})
    except Exception as e:  # noqa: BLE001 - any failure means: this runtime cannot
        return str(e).strip().splitlines()[0][:200]
    if not np.allclose(y[0], dequantize_int8(codes, scales, 16)[1]):
        return "GatherBlockQuantized(bits=8) returned wrong values"
    return None


def require_int8_gather() -> None:
    """Fail with one message naming the setting when this ONNX Runtime cannot run the int8
    embedding lookup (``GatherBlockQuantized`` with ``bits=8`` on the CPU)."""
    from importlib import metadata

    err = _gather_int8_error()
    if err is not None:
        raise DistillError(
            f"{SETTING}: 8 needs an ONNX Runtime whose CPU GatherBlockQuantized runs 8-bit data; "
            f"onnxruntime {metadata.version('onnxruntime')} cannot ({err}). Upgrade it "
            "(pip install 'distill[cpu-int4]', versions in requirements.lock.txt) or set "
            f"{SETTING}: 32 (fp32 embedding, untied: larger) or quantize.engine.lm_head_bits: 4"
        )


def _one(items: list, what: str):
    if len(items) != 1:
        raise DistillError(
            f"expected one {what} in the model builder's graph, found {len(items)}; "
            f"this builder version is not supported with {SETTING}: 8 (set it to 32)"
        )
    return items[0]


def tie_int8_embedding(model, tied: bool, block_size: int = 32) -> dict[str, int]:
    """Edit the builder's graph (an ``onnx.ModelProto`` with an int8 head) in place: the head
    requantized symmetric, the embedding looked up in int8; returns the bytes of the int8 weights
    and of the fp32 embedding it replaced."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    head = _one(
        [n for n in g.node if n.op_type == "MatMulNBits" and "logits" in n.output],
        "MatMulNBits node producing the logits",
    )
    attrs = attributes(head)
    if attrs.get("bits") != 8:
        raise DistillError(f"the LM head is {attrs.get('bits')}-bit, not int8 ({SETTING}: 8)")
    emb = _one(
        [n for n in g.node if n.op_type == "Gather" and n.input[0] in inits],
        "Gather of an embedding initializer",
    )
    weight = numpy_helper.to_array(inits[emb.input[0]]).astype(np.float32)
    vocab, hidden = weight.shape
    if tied and (attrs["N"], attrs["K"]) != (vocab, hidden):
        raise DistillError(
            f"tied model but the head is {attrs['N']}x{attrs['K']} and the embedding "
            f"{vocab}x{hidden}"
        )
    codes, scales = quantize_int8(weight, block_size)
    prefix = "lm_head.MatMul.weight" if tied else "model.embed_tokens.weight"
    q_name, s_name = f"{prefix}_Q8sym", f"{prefix}_scale_sym"
    new = [
        numpy_helper.from_array(codes, f"{q_name}_2d"),
        numpy_helper.from_array(scales, s_name),
    ]
    data_2d = f"{q_name}_2d"
    drop = {emb.input[0]}
    if tied:  # the head reads the same bytes in MatMulNBits' [N, blocks, block] layout
        blocks = codes.reshape(vocab, hidden // block_size, block_size)
        new[0] = numpy_helper.from_array(blocks, q_name)
        shape = numpy_helper.from_array(np.array([vocab, hidden], np.int64), f"{q_name}_shape")
        new.append(shape)
        reshape = helper.make_node(
            "Reshape", [q_name, shape.name], [data_2d], name="/model/embed_tokens/Reshape"
        )
        drop |= set(head.input[1:])
        del head.input[1:]
        head.input.extend([q_name, s_name])  # no zero points: the default is 128 for 8 bits
        for a in head.attribute:
            if a.name == "block_size":
                a.i = block_size
    gather = helper.make_node(
        "GatherBlockQuantized",
        [data_2d, emb.input[1], s_name],
        list(emb.output),
        name="/model/embed_tokens/GatherBlockQuantized",
        domain="com.microsoft",
        bits=8,
        block_size=block_size,
        gather_axis=0,
        quantize_axis=1,
    )
    at = list(g.node).index(emb)
    g.node.remove(emb)
    for i, node in enumerate([reshape, gather] if tied else [gather]):
        g.node.insert(at + i, node)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name not in drop or t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + new)
    return {"int8_bytes": int(codes.nbytes + scales.nbytes), "fp32_replaced": int(weight.nbytes)}

"""Carry a GGUF ``Q4_1`` model's own 4-bit grid into the CPU engine exactly (``engine.algo: q4_1``).

A checkpoint dequantized from a GGUF ``Q4_1`` file (the packaged SmolLM2 teacher) holds, in every
block of 32 weights along ``in_features``, the values ``m + d * q`` with ``q`` in 0..15 and a
float offset ``m``. Any other 4-bit grid re-rounds them (symmetric GPTQ/RTN grids sit half a step
off), and ``MatMulNBits`` takes only integer zero points on its fast path. So the builder's
``MatMulNBits`` (from ``source: fp``, block 32) gets the exact codes, ``d`` and zero point 0, and
the offset is added back per block through the block sums of the input:
``y += blocksum(x) @ (m + 8 d).T`` (one ``ReduceSum`` per distinct input, one small fp32
``MatMul`` + ``Add`` per layer; the offsets stored in fp16, whose rounding is a small fraction of
a step ``d``; the codes use the default zero point 8, so no zero points are stored)::

    with edit_model(Path("runs/x/teacher-int4-cpu")) as model:       # distill.runtime.graph
        carry_q4_1(model, Path("~/.cache/distill/gguf/<hash>"))

A weight that is not on such a grid is refused (naming the setting), never silently re-rounded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from distill.config.base import DistillError
from distill.runtime.graph import attributes

BLOCK = 32
SETTING = "quantize.engine.algo: q4_1"
# builder node name -> the HF linears it holds (qkv_proj is q, k, v concatenated along N)
_NODE = re.compile(
    r"/model/layers\.(\d+)/(attn|mlp)/(qkv_proj|o_proj|gate_proj|up_proj|down_proj)/"
)
_HF = {
    "qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o_proj": ("self_attn.o_proj",),
    "gate_proj": ("mlp.gate_proj",),
    "up_proj": ("mlp.up_proj",),
    "down_proj": ("mlp.down_proj",),
}


def q4_1_grid(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``w`` [n, k] as ``m + d * q`` per block of 32 (codes uint8 [n, k] in 0..15, ``d`` and ``m``
    fp32 [n, k/32]), or None when some block is not an asymmetric 4-bit grid."""
    n, k = w.shape
    if k % BLOCK:
        return None
    b = np.asarray(w, np.float64).reshape(n, k // BLOCK, BLOCK)
    lo, hi = b.min(-1), b.max(-1)
    d = (hi - lo) / 15.0
    safe = np.where(d > 0, d, 1.0)
    t = (b - lo[..., None]) / safe[..., None]
    q = np.rint(t)
    bad = np.abs(t - q).max(-1) > 1e-3
    if bad.any():  # a block whose extremes are not codes 0 and 15: step = the smallest gap
        for i, j in zip(*np.nonzero(bad), strict=True):
            vals = np.unique(b[i, j])
            step = np.diff(vals).min()
            tt = (b[i, j] - lo[i, j]) / step
            if tt.max() > 15 + 1e-3 or np.abs(tt - np.rint(tt)).max() > 1e-3:
                return None
            d[i, j], q[i, j] = step, np.rint(tt)
    d = np.where(d > 0, d, 0.0)
    d16 = d.astype(np.float16).astype(np.float64)  # GGUF stores d in fp16: snap back to it
    d = np.where(np.abs(d16 - d) <= 1e-4 * d, d16, d)
    return q.astype(np.uint8).reshape(n, k), d.astype(np.float32), lo.astype(np.float32)


def _pack(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [n, k] → MatMulNBits' [n, k/32, 16] bytes (low nibble first)."""
    n, k = codes.shape
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).reshape(n, k // BLOCK, 16)


def _hf_weights(src: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    state: dict[str, np.ndarray] = {}
    for f in sorted(Path(src).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def _layer_grid(node, state: dict[str, np.ndarray], src: Path):
    """``(codes, d, offset)`` of the HF weights behind one ``MatMulNBits`` node, checked
    against the node's shape and for lying on a Q4_1 grid."""
    m = _NODE.match(node.name)
    layer, kind = int(m.group(1)), m.group(3)
    names = [f"model.layers.{layer}.{h}.weight" for h in _HF[kind]]
    if any(n not in state for n in names):
        raise DistillError(f"{SETTING}: {src} has no {names} for graph node {node.name}")
    w = np.concatenate([state[n].astype(np.float32) for n in names], 0)
    attrs = attributes(node)
    if (attrs["N"], attrs["K"], attrs["block_size"], attrs["bits"]) != (*w.shape, BLOCK, 4):
        raise DistillError(
            f"{SETTING}: graph node {node.name} is {attrs} but {names} are {w.shape}; "
            "export with source: fp and block_size 32"
        )
    grid = q4_1_grid(w)
    if grid is None:
        raise DistillError(
            f"{SETTING}: {names[0]} of {src} is not on a 4-bit asymmetric grid of blocks of "
            f"{BLOCK} (a GGUF Q4_1 model's); use algo: rtn or k_quant, or source: gptq"
        )
    return grid


def _block_sum_nodes(x: str, base: str, added: list) -> list:
    """Nodes summing input ``x`` over each block of 32 (``{base}/block_sums``)."""
    from onnx import helper, numpy_helper

    shape, axes = f"{base}/blocks_shape", f"{base}/axes"
    added += [
        numpy_helper.from_array(np.array([0, 0, -1, BLOCK], np.int64), shape),
        numpy_helper.from_array(np.array([-1], np.int64), axes),
    ]
    return [
        helper.make_node("Reshape", [x, shape], [f"{base}/blocks"], name=f"{base}/Reshape"),
        helper.make_node(
            "ReduceSum",
            [f"{base}/blocks", axes],
            [f"{base}/block_sums"],
            name=f"{base}/ReduceSum",
            keepdims=0,
        ),
    ]


def _offset_nodes(base: str, sums: str, y: str, offset: np.ndarray, added: list) -> list:
    """Nodes adding ``block sums @ offsets`` to the grid's output, writing the node's old
    output ``y``."""
    from onnx import helper, numpy_helper

    off16 = f"{base}/offsets_fp16"
    added.append(numpy_helper.from_array(offset.T.astype(np.float16), off16))
    return [
        helper.make_node("Cast", [off16], [f"{base}/offsets"], name=f"{base}/Cast", to=1),
        helper.make_node(
            "MatMul", [sums, f"{base}/offsets"], [f"{base}/offset_out"], name=f"{base}/MatMul"
        ),
        helper.make_node(
            "Add", [f"{base}/grid_out", f"{base}/offset_out"], [y], name=f"{base}/Add"
        ),
    ]


def carry_q4_1(model, src: Path) -> dict[str, int]:
    """Edit the builder's graph (``onnx.ModelProto`` from ``src`` with ``source: fp``, block 32)
    in place: every layer's ``MatMulNBits`` gets ``src``'s exact grid and its offset term."""
    from onnx import numpy_helper

    g = model.graph
    state = _hf_weights(src)
    inits = {t.name: i for i, t in enumerate(g.initializer)}
    new_nodes: dict[int, list] = {}  # index of a MatMulNBits node -> nodes to insert after it
    block_sums: dict[str, str] = {}  # input tensor -> its block sums
    added: list = []  # new initializers
    for idx, node in enumerate(g.node):
        if node.op_type != "MatMulNBits" or _NODE.match(node.name) is None:
            continue
        codes, d, offset = _layer_grid(node, state, src)
        # the grid: codes and scales replace the builder's; the default zero point 8 goes
        q_name, s_name = node.input[1], node.input[2]
        g.initializer[inits[q_name]].CopyFrom(numpy_helper.from_array(_pack(codes), q_name))
        g.initializer[inits[s_name]].CopyFrom(numpy_helper.from_array(d, s_name))
        del node.input[3:]
        # the offset: y = grid_out + block_sums(x) @ (offset + 8 d)
        base = node.name.rsplit("/", 1)[0] + "/q4_1"
        x, y = node.input[0], node.output[0]
        extra = []
        if x not in block_sums:
            extra += _block_sum_nodes(x, base, added)
            block_sums[x] = f"{base}/block_sums"
        node.output[0] = f"{base}/grid_out"
        new_nodes[idx] = extra + _offset_nodes(base, block_sums[x], y, offset + 8.0 * d, added)
    if not new_nodes:
        raise DistillError(f"{SETTING}: no layer MatMulNBits found in the builder's graph")
    nodes = list(g.node)
    del g.node[:]
    for i, node in enumerate(nodes):
        g.node.append(node)
        g.node.extend(new_nodes.get(i, []))
    g.initializer.extend(added)
    return {"layers": len(new_nodes)}


def is_q4_1_checkpoint(src: Path) -> bool:
    """Whether ``src``'s first layer's q_proj lies on a Q4_1 grid (a cheap check before export)."""
    raw = json.loads((Path(src) / "config.json").read_text())
    if raw.get("quantization_config"):
        return False
    from safetensors import safe_open

    name = "model.layers.0.self_attn.q_proj.weight"
    for f in sorted(Path(src).glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            if name in st.keys():  # noqa: SIM118 - safe_open has no __contains__
                return q4_1_grid(st.get_tensor(name).astype(np.float32)) is not None
    return False

"""Edits of an exported ONNX Runtime GenAI graph after the model builder, in one load and save.

    with edit_model(Path("runs/x/.student-int4-cpu.tmp-1")) as model:   # saved when the block ends
        tie_int8_embedding(model, tied=True)
        drop_default_zero_points(model)

The export calls this inside its temp directory (renamed when whole). Weights go to one external
data file, ``model.onnx.data``, as the builder writes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

DATA = "model.onnx.data"


@contextmanager
def edit_model(model_dir: Path) -> Iterator:
    """``model_dir/model.onnx`` with its weights, written back (all weights external) on exit."""
    import onnx

    model_dir = Path(model_dir)
    path = model_dir / "model.onnx"
    model = onnx.load(str(path))
    yield model
    for f in model_dir.glob("model.onnx*"):
        f.unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA,
        size_threshold=1024,
    )
    (model_dir / DATA).chmod(0o644)  # as the builder writes it (onnx makes it 0600)


def attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def drop_default_zero_points(model) -> int:
    """Remove ``MatMulNBits`` zero points that all equal the default (8 for 4 bits, 128 for 8):
    symmetric weights (GPTQ ``sym``) need none. Returns how many were dropped."""
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    dropped = set()
    for node in g.node:
        if node.op_type != "MatMulNBits" or len(node.input) < 4 or node.input[3] not in inits:
            continue
        if len(node.input) > 4 and any(node.input[4:]):
            continue  # g_idx / bias follow: keep the positions as they are
        a = attributes(node)
        bits, blocks = a["bits"], -(-a["K"] // a["block_size"])
        zp = numpy_helper.to_array(inits[node.input[3]]).reshape(a["N"], -1)
        if bits == 4:
            zp = np.stack([zp & 0xF, zp >> 4], -1).reshape(a["N"], -1)[:, :blocks]
        if zp.dtype != np.uint8 or not np.all(zp == 1 << (bits - 1)):
            continue
        dropped.add(node.input[3])
        del node.input[3:]
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name not in dropped or t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return len(dropped)

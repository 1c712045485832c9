"""torch-pruning 1.6.1 on torch 2.13: guard the RoPE concat that hangs graph building.

Llama's rotary embedding does ``cat(dim=-1)``; on torch 2.13 its autograd node reports
``_saved_dim = 2**64 - 1``, torch-pruning takes it for a channel concat and
``update_concat_index_mapping`` never returns. The guard returns early for such dims.
Applied on demand (never at import time), idempotent::

    from distill.prune.tp_patch import dependency_graph
    dg = dependency_graph(model, example_input_ids)    # patches, then builds
"""

from __future__ import annotations

from typing import Any

_GUARD_ATTR = "_distill_rope_guard"


def patch_torch_pruning() -> None:
    """Wrap ``update_concat_index_mapping`` so a concat with ``_saved_dim >= 2**63`` is skipped."""
    from torch_pruning.dependency import index_mapping

    current = index_mapping.update_concat_index_mapping
    if getattr(current, _GUARD_ATTR, False):
        return

    def guarded(graph: Any, cat_node: Any) -> None:
        dim = getattr(getattr(cat_node, "grad_fn", None), "_saved_dim", None)
        if isinstance(dim, int) and dim >= 2**63:
            return None
        return current(graph, cat_node)

    setattr(guarded, _GUARD_ATTR, True)
    index_mapping.update_concat_index_mapping = guarded


def dependency_graph(model: Any, input_ids: Any) -> Any:
    """A torch-pruning ``DependencyGraph`` of an HF causal LM (patched first).

    RMSNorm weights are registered as unwrapped parameters pruned along dim 0."""
    import torch_pruning as tp

    patch_torch_pruning()
    unwrapped = [
        (m.weight, 0)
        for m in model.modules()
        if type(m).__name__.endswith("RMSNorm") and getattr(m, "weight", None) is not None
    ]
    return tp.DependencyGraph().build_dependency(
        model,
        example_inputs={"input_ids": input_ids},
        output_transform=lambda out: out.logits,
        unwrapped_parameters=unwrapped,
        verbose=False,
    )

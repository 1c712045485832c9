"""An engine model seen through the small slice of the HF model API that distill's metrics use.

``evaluate`` (``distill.eval.metrics``) calls ``model(input_ids=ids).logits`` and reads the
device from ``next(model.parameters())``; the MLflow pyfunc calls ``model.generate(ids, ...)``::

    model = EngineAsTorch(OrtGenAIModel.load(path, threads=2))
    model(input_ids=ids).logits        # torch.float32 [B, S, vocab], computed by the engine
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np


def engine_as_torch(engine: Any):
    """Wrap an engine (``logits(rows)``, ``generate(prompts, n)``) as a ``torch.nn.Module``."""
    import torch

    class EngineAsTorch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.engine = engine
            # metrics read the device from the first parameter; it holds no weight
            self._device_anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

        def forward(self, input_ids, **_: Any):
            rows = input_ids.detach().cpu().numpy()
            return SimpleNamespace(logits=torch.from_numpy(self.engine.logits(rows)))

        def generate(self, input_ids, max_new_tokens: int = 16, **kw: Any):
            """Greedy (or sampled with ``temperature``) continuation, HF-style: ``[B, S + n]``
            token ids, finished rows padded with the engine's pad id."""
            temperature = float(kw.get("temperature") or 0.0) if kw.get("do_sample") else 0.0
            prompts = [list(map(int, r)) for r in input_ids.detach().cpu().numpy()]
            outs = self.engine.generate(prompts, max_new_tokens, temperature=temperature)
            width = max(len(o.token_ids) for o in outs)
            new = np.full((len(outs), width), self.engine.pad_id, dtype=np.int64)
            for i, o in enumerate(outs):
                new[i, : len(o.token_ids)] = o.token_ids
            return torch.cat([input_ids.cpu(), torch.from_numpy(new)], dim=1)

    return EngineAsTorch().eval()

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
            # the eos ids the export declares, where the stop rule reads an HF model's
            # (distill.models.stopping: generation_config and config)
            eos = SimpleNamespace(eos_token_id=sorted(getattr(engine, "eos_ids", ())) or None)
            self.config = self.generation_config = eos

        def forward(self, input_ids, **_: Any):
            rows = input_ids.detach().cpu().numpy()
            return SimpleNamespace(logits=torch.from_numpy(self.engine.logits(rows)))

        def generate(self, input_ids, max_new_tokens: int = 16, attention_mask=None, **kw: Any):
            """Greedy (or sampled with ``temperature``) continuation, HF-style: ``[B, S + n]``
            token ids (left padding in ``attention_mask`` is removed before the engine sees the
            prompts), finished rows padded with the engine's pad id; with
            ``return_dict_in_generate`` also ``logits``: one ``[B, vocab]`` tensor per step."""
            temperature = float(kw.get("temperature") or 0.0) if kw.get("do_sample") else 0.0
            ids = input_ids.detach().cpu().numpy()
            mask = np.ones_like(ids) if attention_mask is None else attention_mask.cpu().numpy()
            prompts = [
                [int(t) for t, m in zip(r, mr, strict=True) if m]
                for r, mr in zip(ids, mask, strict=True)
            ]
            want_logits = bool(kw.get("return_dict_in_generate"))
            steps = list(
                self.engine.generate_steps(
                    prompts, max_new_tokens, temperature=temperature, return_logits=want_logits
                )
            )
            new = np.full((len(prompts), len(steps)), self.engine.pad_id, dtype=np.int64)
            for j, st in enumerate(steps):
                new[:, j] = np.where(st.token_ids < 0, self.engine.pad_id, st.token_ids)
            seq = torch.cat([input_ids.cpu(), torch.from_numpy(new)], dim=1)
            if not want_logits:
                return seq
            logits = tuple(torch.from_numpy(st.logits) for st in steps)
            return SimpleNamespace(sequences=seq, logits=logits)

    return EngineAsTorch().eval()

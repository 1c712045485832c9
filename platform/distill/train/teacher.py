"""The live teacher of online and on-policy steps: in the training worker, or a Ray actor.

``distill.teacher_placement: worker`` loads a teacher copy in every training worker
(:class:`LocalTeacher`). ``actor`` starts one :class:`TeacherServer` actor per node, created by
the first worker on that node that needs it and shared by every worker there
(:class:`RemoteTeacher`): one teacher in memory per node instead of one per worker, and it can
sit on a GPU of its own (``distill.teacher_actor.num_gpus``). Both give the worker the same
thing, so the loss is the same::

    teacher = LocalTeacher.load(path, "float32", device)        # or:
    teacher = RemoteTeacher.for_this_node("distill-teacher-1a2b", path, cfg, device)
    t_out, t_head = teacher(ids, attention_mask, fused=True)    # hidden states + head weight

With a fused loss (the LM head applied chunk by chunk, ``distill.losses.fused``) the actor
returns the teacher's final hidden states and, once, its head weight; otherwise its logits.
A dead actor is restarted by Ray (``teacher_actor.max_restarts``, calls in flight retried); when
that is exhausted the worker raises a :class:`DistillError` naming the actor, and Ray Train
restarts the worker group from the last checkpoint (``distill.max_failures``).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from distill.config.base import DistillError
from distill.train.config import DistillConfig
from distill.train.engine import head_weight

NAMESPACE = "distill"
FAIL_ENV = "DISTILL_TEACHER_FAIL_AT_CALL"  # tests: "<call>:<marker>" ends the actor once


def _load(path: str, dtype: str, device: Any, eager: bool = False) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kw = {"attn_implementation": "eager"} if eager else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), local_files_only=True, **kw
    )
    return model.to(device).eval().requires_grad_(False)


def _forward(model: Any, ids: Any, am: Any, fused: bool, **kw: Any) -> tuple[Any, Any]:
    """``(output, head)``: hidden states + head weight when fused and exact, else logits."""
    import torch

    head = head_weight(model) if fused else None
    with torch.no_grad():
        out = (model if head is None else model.base_model)(input_ids=ids, attention_mask=am, **kw)
    return out, head


class LocalTeacher:
    """The teacher inside this worker (``teacher_placement: worker``)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @classmethod
    def load(cls, path: str, dtype: str, device: Any, eager: bool = False) -> LocalTeacher:
        return cls(_load(path, dtype, device, eager))

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def __call__(self, ids: Any, am: Any, fused: bool, **kw: Any) -> tuple[Any, Any]:
        return _forward(self.model, ids, am, fused, **kw)


class TeacherServer:
    """The body of the teacher actor (wrapped with ``ray.remote`` by :func:`start_actor`)."""

    def __init__(self, path: str, dtype: str, threads: int, gpu: bool, fail_at: str | None):
        import torch

        torch.set_num_threads(max(threads, 1))
        self.device = torch.device("cuda" if gpu else "cpu")
        self.model = _load(path, dtype, self.device)
        self.calls = 0
        self.fail_at = fail_at

    def ready(self) -> int:
        return int(self.model.config.hidden_size)

    def head(self) -> Any:
        """The LM head weight (CPU) when ``logits = hidden @ Wᵀ`` exactly, else None."""
        h = head_weight(self.model)
        return None if h is None else h.detach().cpu()

    def score(self, ids: Any, am: Any, fused: bool) -> Any:
        """Final hidden states (``fused`` and an exact head) or logits, on the CPU."""
        self._maybe_fail()
        ids = ids.to(self.device)
        am = am.to(self.device) if am is not None else None
        out, head = _forward(self.model, ids, am, fused)
        return (out.last_hidden_state if head is not None else out.logits).cpu()

    def _maybe_fail(self) -> None:
        self.calls += 1
        if not self.fail_at:
            return
        at, marker = self.fail_at.split(":", 1)
        if self.calls == int(at) and not Path(marker).exists():
            Path(marker).touch()
            os._exit(1)


def start_actor(name: str, path: str, cfg: DistillConfig, node_id: str | None = None) -> Any:
    """The teacher actor ``name`` (namespace ``distill``): created on ``node_id`` (this node
    when None) unless it exists; waits until its weights are loaded."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = node_id or ray.get_runtime_context().get_node_id()
    ac = cfg.teacher_actor
    threads = ac.threads or max(1, round(cfg.cpus_per_worker))
    actor_cls = ray.remote(TeacherServer).options(
        name=name,
        namespace=NAMESPACE,
        get_if_exists=True,
        num_cpus=ac.num_cpus,
        num_gpus=ac.num_gpus,
        max_restarts=ac.max_restarts,
        max_task_retries=ac.max_restarts,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
    )
    handle = actor_cls.remote(
        path, cfg.compute_dtype, threads, ac.num_gpus > 0, os.environ.get(FAIL_ENV)
    )
    try:
        ray.get(handle.ready.remote())
    except ray.exceptions.RayError as e:
        raise DistillError(
            f"the teacher actor {name!r} could not start ({type(e).__name__}): check the teacher "
            f"at {path} and distill.teacher_actor (num_cpus/num_gpus): {e}"
        ) from None
    return handle


class RemoteTeacher:
    """The teacher actor on this worker's node (``teacher_placement: actor``)."""

    def __init__(self, handle: Any, name: str, device: Any) -> None:
        self.handle, self.name, self.device = handle, name, device
        self._head: Any = None
        self._head_known = False
        self.hidden_size = self._get(handle.ready.remote())

    @classmethod
    def for_this_node(cls, prefix: str, path: str, cfg: DistillConfig, device: Any):
        import ray

        node = ray.get_runtime_context().get_node_id()
        name = f"{prefix}-{node[:16]}"
        return cls(start_actor(name, path, cfg, node), name, device)

    def _get(self, ref: Any) -> Any:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as e:
            raise DistillError(
                f"the teacher actor {self.name!r} died ({type(e).__name__}) after "
                "distill.teacher_actor.max_restarts restarts; the run restarts from its last "
                f"checkpoint while distill.max_failures allows: {e}"
            ) from None

    def head(self) -> Any:
        if not self._head_known:
            h = self._get(self.handle.head.remote())
            self._head = None if h is None else h.to(self.device)
            self._head_known = True
        return self._head

    def __call__(self, ids: Any, am: Any, fused: bool, **kw: Any) -> tuple[Any, Any]:
        if kw.get("output_hidden_states") or kw.get("output_attentions"):
            raise DistillError("teacher_placement: actor returns logits only (no layer outputs)")
        head = self.head() if fused else None
        fused = head is not None
        ref = self.handle.score.remote(ids.cpu(), am.cpu() if am is not None else None, fused)
        out = self._get(ref).to(self.device)
        if fused:
            return SimpleNamespace(last_hidden_state=out), head
        return SimpleNamespace(logits=out), None

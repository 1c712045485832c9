"""Where the ``TeacherScorer`` actors go (``soft_labels.placement``)::

    distill run pipelines/configs/smoke.yaml --set soft_labels.num_actors=2 \
        --set soft_labels.placement=strict_spread     # one teacher per node

``spread`` leaves placement to Ray Data (its default SPREAD strategy, best effort): an actor
goes to another node only if that node has the resources free *at that moment*, so right
after a stage whose tasks still hold a node's CPUs both teachers can land on one node (seen on
the two-node test cluster: the corpus stage's last tasks held the worker's CPU and both
scorers started on the head). ``strict_spread`` reserves one bundle per actor in a Ray
placement group with strategy ``STRICT_SPREAD`` (every bundle on a different node) and waits
for it, so each teacher gets its own node; a cluster with fewer suitable nodes than
``num_actors`` fails after ``actor_start_timeout_s`` with one error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distill.config.base import DistillError
from distill.labels.config import SoftLabelsConfig


def pool_bundle(cfg: SoftLabelsConfig) -> dict[str, float]:
    """One scorer actor's resources, as a placement-group bundle."""
    bundle = {"CPU": float(cfg.num_cpus_per_actor)}
    if cfg.num_gpus_per_actor:
        bundle["GPU"] = float(cfg.num_gpus_per_actor)
    return bundle


@contextmanager
def scorer_placement(cfg: SoftLabelsConfig) -> Iterator[dict[str, Any]]:
    """Ray remote args for the scorer pool; a ``strict_spread`` placement group lives for the
    ``with`` block and is removed after it (also on error)."""
    if cfg.placement == "spread":
        yield {}
        return
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = pool_bundle(cfg)
    pg = placement_group([dict(bundle) for _ in range(cfg.num_actors)], strategy="STRICT_SPREAD")
    try:
        ready, _ = ray.wait([pg.ready()], timeout=cfg.actor_start_timeout_s)
        if not ready:
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            raise DistillError(
                f"soft_labels.placement=strict_spread: no {cfg.num_actors} distinct nodes each "
                f"with {bundle} free within {cfg.actor_start_timeout_s} s "
                f"(soft_labels.actor_start_timeout_s); the cluster has {nodes} alive node(s): "
                "lower soft_labels.num_actors, add nodes, or use placement: spread"
            )
        yield {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                pg, placement_group_capture_child_tasks=False
            )
        }
    finally:
        remove_placement_group(pg)

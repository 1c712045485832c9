"""Structured pruning (depth, heads, MLP and hidden channels) of Llama-family HF models.

Modules: ``config`` (PruneConfig), ``shape`` (shapes and parameter counts), ``planner`` (explicit
shape or parameter budget), ``importance`` (calibration statistics), ``apply`` (slicing and
torch-pruning), ``core.prune_model`` (all three), ``stage`` (the pipeline stage)::

    distill run pipelines/configs/smoke.yaml --set prune.target_params=0.5
"""

"""distill: Ray-distributed LLM compression (soft labels, prune, KD, GPTQ, serve, MLflow lineage).

Entry point: ``distill run pipelines/configs/smoke.yaml``. Importing the package has no side effects.
"""

__version__ = "0.1.0"

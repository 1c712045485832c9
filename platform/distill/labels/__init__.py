"""distill.labels: teacher top-k soft labels (stage ``soft_labels``) and their store.

    from distill.labels.store import LabelStore      # reader for training
    from distill.labels.targets import topk_target_logprobs  # temperature-T targets over top-k

Modules: ``config`` (SoftLabelsConfig), ``stage`` (Ray Data pipeline), ``scorer``
(TeacherScorer actor), ``topk`` (extraction, encodings, fidelity), ``shards`` / ``manifest`` /
``resume`` (on-disk format and rerun logic), ``store`` (LabelStore), ``targets``.
"""

"""distill.labels: teacher soft labels (stage ``soft_labels``: top-k or sampled) and their store.

    from distill.labels.store import LabelStore      # reader for training
    from distill.losses.targets import topk_target_logprobs  # the losses' targets over top-k

Modules: ``config`` (SoftLabelsConfig), ``stage`` (Ray Data pipeline), ``scorer``
(TeacherScorer actor), ``encode`` (logits → store columns, both encodings), ``topk``
(extraction, log-prob encodings, fidelity), ``sampled`` (unbiased sampled targets), ``shards`` /
``manifest`` / ``resume`` (on-disk format and rerun logic), ``store`` (LabelStore),
``local`` (in-process writer for tests and benchmarks).
"""

"""Typed configuration: ``PipelineConfig`` and YAML loading with ``--set a.b=c`` overrides."""

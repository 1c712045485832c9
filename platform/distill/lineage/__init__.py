"""MLflow lineage: pipeline parent run, stage child runs, inputs/outputs, registered models."""

"""Watching a served student: a bounded Parquet request log and drift against evaluation time.

distill serve deploy/serve.yaml            # args.request_log: {path: runs/serve-log}
distill monitor runs/serve-log --reference runs/smollm2/report.json
"""

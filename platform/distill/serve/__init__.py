"""distill.serve: a Ray Serve student/teacher cascade behind an OpenAI-compatible API.

    serve run deploy/serve.yaml        # or: distill serve deploy/serve.yaml

Importing this package stays light (no Ray, no torch): ``build_app`` and ``run_from_config``
load their modules on first use.
"""

from typing import Any

__all__ = ["build_app", "run_from_config"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from distill.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'distill.serve' has no attribute {name!r}")

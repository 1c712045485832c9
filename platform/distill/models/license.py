"""License gate: refuse teachers whose license forbids training other models on their outputs.

Apache-2.0 / MIT / BSD allow distillation; Llama community licenses forbid using outputs to train
other LLMs; CC-BY-NC / -ND forbid commercial use or derivatives. An unknown license is refused too,
unless the config declares one (``teacher.license``) or sets ``allow_restricted_license: true``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from distill.config.base import DistillError

PERMISSIVE = (
    "apache-2.0", "apache software license", "apache license", "mit", "bsd", "cc-by-4.0",
    "cc0", "unlicense", "openrail", "mpl-2.0", "gemma", "nvidia open model license",
)  # fmt: skip
RESTRICTED = ("llama", "cc-by-nc", "cc-by-nd", "-nc-", "-nd-", "non-commercial", "noncommercial")


@dataclass(frozen=True)
class LicenseDecision:
    license: str | None
    allowed: bool
    reason: str


def classify(license_text: str | None) -> tuple[str, str]:
    """Return ("permissive" | "restricted" | "unknown", matched rule)."""
    if not license_text:
        return "unknown", "no license declared"
    low = re.sub(r"\s+", " ", license_text.lower())
    for pat in RESTRICTED:
        if pat in low:
            return "restricted", f"{pat!r} forbids training other models on outputs or derivatives"
    for pat in PERMISSIVE:
        if pat in low:
            return "permissive", f"{pat!r} allows derivatives"
    return "unknown", f"license {license_text!r} is not known to allow distillation"


def check_license(license_text: str | None, override: bool, model_name: str) -> LicenseDecision:
    """Decide whether distilling ``model_name`` is allowed; raise ``DistillError`` if not."""
    kind, why = classify(license_text)
    if kind == "permissive":
        return LicenseDecision(license_text, True, why)
    if override:
        return LicenseDecision(license_text, True, f"override set ({why})")
    raise DistillError(
        f"teacher {model_name!r}: license refused for distillation: {why}. "
        "Set teacher.allow_restricted_license: true only if you hold the rights to do this."
    )

"""Vetting untrusted generated sims: a static allowlist, then a validation suite in a limited subprocess."""

from dreamer.sandbox.config import FidelityThresholds, SandboxConfig
from dreamer.sandbox.loading import load_sim
from dreamer.sandbox.static import UnsafeSourceError, Violation, check_source
from dreamer.sandbox.validate import SandboxReport, validate, validate_many

__all__ = [
    "FidelityThresholds",
    "SandboxConfig",
    "SandboxReport",
    "UnsafeSourceError",
    "Violation",
    "check_source",
    "load_sim",
    "validate",
    "validate_many",
]

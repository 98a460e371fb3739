"""Remedies: each a config dataclass plus a registered ``Handoff -> Handoff`` handler.

Importing the package registers the built-in remedies (``REMEDIES``); ``apply_remedy`` runs one.
"""

from npuq.remedies import activation, best, calibration, distill, head, qaf, weight_norm  # noqa: F401
from npuq.remedies.base import (
    REMEDIES,
    CalibSet,
    Context,
    DataRef,
    Handoff,
    RemedyConfig,
    apply_remedy,
    register_remedy,
    remedy_config,
)

__all__ = ["REMEDIES", "CalibSet", "Context", "DataRef", "Handoff", "RemedyConfig", "apply_remedy",
           "register_remedy", "remedy_config"]

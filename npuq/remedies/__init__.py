"""Remedies: each a config dataclass plus a registered ``Handoff -> Handoff`` handler.

Importing the package registers the built-in remedies (``REMEDIES``); ``apply_remedy`` runs one.
"""

from npuq.remedies import (  # noqa: F401
    activation,
    best,
    calib_search,
    calibration,
    centre_logit,
    distill,
    head,
    mixed_precision,
    qaf,
    range_anchor,
    weight_norm,
)
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

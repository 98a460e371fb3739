"""Identify a black-box toolchain from its own outputs: export the probe kit, fit a profile to what the
device returned (``export_kit``, ``fit_kit``)."""

from npuq.probe.fit import FieldFit, FitResult, fit_kit, write_simulated_outputs
from npuq.probe.kit import export_kit

__all__ = ["FieldFit", "FitResult", "export_kit", "fit_kit", "write_simulated_outputs"]

"""Simulated NPU post-training quantization: profiles, grids, observers, graph transforms, QuantSim."""

from npuq.quant.sim import ActQuantizer, CaptureStore, QuantSim, WeightQuantizer, load_quantsim, simulate_ptq

__all__ = ["ActQuantizer", "CaptureStore", "QuantSim", "WeightQuantizer", "load_quantsim", "simulate_ptq"]

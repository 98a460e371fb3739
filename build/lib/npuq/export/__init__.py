"""ONNX export of the float model and of the simulated INT8 model (QDQ), and the ONNX Runtime cross-check."""

from npuq.export.onnx_export import export_float_onnx, export_qdq_onnx
from npuq.export.ort_check import compare_with_sim, fused_integer_ops, run_onnx

__all__ = ["compare_with_sim", "export_float_onnx", "export_qdq_onnx", "fused_integer_ops", "run_onnx"]

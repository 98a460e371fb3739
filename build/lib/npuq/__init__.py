"""npuq: make a monocular depth network survive INT8 PTQ on a black-box NPU toolchain."""

__version__ = "0.1.0"

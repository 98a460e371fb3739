"""Training: supervised depth losses (``losses``) and the FP32 training loop (``fp32``)."""

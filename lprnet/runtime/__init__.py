"""Running artifacts: one Predictor per runtime (PyTorch, ONNX Runtime, TVM), evaluation, benchmarking, metrics."""

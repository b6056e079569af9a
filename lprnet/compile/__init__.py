"""From a PyTorch model to deployable artifacts: ONNX export (fp32, int8 QDQ) and the TVM compiler (lprnet.compile.tvm).
Knows no runtime: running the artifacts is lprnet.runtime's job."""

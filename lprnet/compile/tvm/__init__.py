"""Apache TVM (Relax): ONNX import, named passes and pipelines, int8 rewrites, build, artifact, MetaSchedule tuning."""

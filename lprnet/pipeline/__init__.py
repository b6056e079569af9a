"""The DVC pipeline's plumbing: stage helpers, params, the TVM stage step, the report, the gate, sweeps."""

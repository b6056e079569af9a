"""LPRNet optimisation pipeline: the library behind the DVC stages and the `python -m lprnet` CLI."""

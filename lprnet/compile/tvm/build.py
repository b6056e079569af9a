"""TVM targets and the build: a Relax module to a VM executable with nothing beyond what a build requires.

A build is `relax.build` with the "default_build" Relax pipeline: the lowering a VM executable needs (LegalizeOps,
memory planning, VM lowering) and nothing else, so every optimisation is one of the named passes a stage chose
(passes.py). Targets are JSON dicts, validated here. Does not write artifacts (see artifact.py).
"""

from __future__ import annotations

import json
import re

import tvm
from tvm import relax

from lprnet.errors import InputError

# "default_build" is relax.pipeline.default_build_pipeline: LegalizeOps plus the lowering to VM code. Plain "default"
# is the same for CPU targets but switches to the fusing, DLight-scheduling pipeline for GPU targets.
BUILD_PIPELINE = "default_build"



def _one_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def parse_target(target: dict) -> tvm.target.Target:
    """TVM's Target for a JSON dict such as {"kind": "llvm", "mcpu": "znver3"}; a one-line ValueError if TVM would
    not parse it or LLVM does not know its mcpu (TVM itself accepts an unknown mcpu, logs an error and compiles for
    a generic CPU). An explicit "mtriple" must name an architecture LLVM has a target for."""
    if not isinstance(target, dict):
        raise InputError(f"target {target!r}: expected a dict such as {{'kind': 'llvm'}}")
    described = json.dumps(target, sort_keys=True)
    try:
        parsed = tvm.target.Target(target)
    except (ValueError, TypeError, tvm.error.InternalError) as error:
        raise InputError(f"target {described}: TVM cannot parse it ({_one_line(error)})") from None
    if parsed.kind.name == "llvm" and "mtriple" in target:
        arch = str(target["mtriple"]).split("-")[0]
        arch = "i386" if re.fullmatch(r"i[3-7]86", arch) else arch
        known = {str(name) for name in tvm.target.codegen.llvm_get_targets()}
        if not any(arch.startswith(name) for name in known):  # e.g. armv7a is arm's
            raise InputError(f"target {described}: LLVM has no target for the mtriple's architecture {arch!r}; "
                             f"known: {', '.join(sorted(known))}")
    # Only for the host's triple: LLVM's CPU list for a triple it cannot parse crashes the process (TVM 0.27).
    if parsed.kind.name == "llvm" and "mtriple" not in target and "mcpu" in target:
        # Asked of a bare llvm target: with the unknown mcpu itself LLVM logs an error before answering.
        known_cpus = {str(cpu) for cpu in tvm.target.codegen.llvm_get_cpu_archlist(tvm.target.Target("llvm"))}
        if str(target["mcpu"]) not in known_cpus:
            triple = tvm.target.codegen.llvm_get_system_triple()
            raise InputError(f"target {described}: LLVM does not know mcpu {target['mcpu']!r} for {triple!r}")
    return parsed


def detect_target(target: dict) -> dict:
    """`target` with "mcpu" filled in with this machine's CPU for llvm targets that name none, validated.

    A library built for the host CPU may use instructions (e.g. AVX-512) other x86-64 machines lack.
    """
    filled = dict(target) if isinstance(target, dict) else target
    if isinstance(filled, dict) and filled.get("kind") == "llvm" and "mcpu" not in filled:
        filled["mcpu"] = str(tvm.target.codegen.llvm_get_system_cpu())
    parse_target(filled)
    return filled


def build(mod: tvm.IRModule, target: dict) -> relax.VMExecutable:
    """A VM executable with no optimisation beyond what a build requires (see BUILD_PIPELINE)."""
    return relax.build(mod, target=parse_target(target), relax_pipeline=BUILD_PIPELINE)



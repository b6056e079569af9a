"""TVM's Relax ONNX frontend for LPRNet, and the module files the TVM stages hand on.

`import_onnx` reads an ONNX model exported by `lprnet.compile.onnx_export` as a Relax module with a fixed batch and its
weights as constants; between stages a module travels as TVM's JSON (`save_ir` / `load_ir`, constants included).
Does not run passes (see passes.py) or build (see build.py). QDQ ONNX is imported as it is: TVM 0.27 then computes
the convolutions in fp32 between quantize/dequantize pairs (int8.py writes them as integer convolutions).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import tvm

from lprnet.compile.tvm.artifact import INPUT_NAME
from lprnet.errors import InputError, MissingFileError
from lprnet.io import write_text_atomic
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH

ALPHABET_ATTR = "lprnet_alphabet"  # IRModule attribute carrying the alphabet name from import to artifact


def import_onnx(path: str | os.PathLike, batch: int = 1) -> tvm.IRModule:
    """The ONNX model as a Relax module with a fixed (batch,3,24,94) input and its weights as constants.

    A fixed batch gives static shapes, which tuning and the untuned kernels both need; `TVMPredictor` runs larger
    inputs in chunks of this batch. The alphabet name from the ONNX metadata rides along as a module attribute.
    """
    from tvm.relax.frontend.onnx import from_onnx

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such ONNX model")
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    model = onnx.load(str(path))
    input_names = [tensor.name for tensor in model.graph.input]
    if INPUT_NAME not in input_names:
        raise InputError(f"{path}: no input named {INPUT_NAME!r} (inputs: {input_names}); export it with lprnet.export")
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if "alphabet" not in metadata:
        raise InputError(f"{path}: no 'alphabet' in the ONNX metadata (export it with lprnet.export)")
    # keep_params_in_input=False binds the initializers as Relax constants, so main takes only the images.
    mod = from_onnx(model, shape_dict={INPUT_NAME: [batch, 3, INPUT_HEIGHT, INPUT_WIDTH]},
                    keep_params_in_input=False)
    return mod.with_attr(ALPHABET_ATTR, metadata["alphabet"])


def module_alphabet_name(mod: tvm.IRModule) -> str:
    attrs = mod.attrs or {}
    if ALPHABET_ATTR not in attrs:
        raise InputError(f"the module has no {ALPHABET_ATTR!r} attribute (import it with frontend.import_onnx)")
    return str(attrs[ALPHABET_ATTR])


def module_input_shape(mod: tvm.IRModule) -> tuple[int, ...]:
    return tuple(int(dim) for dim in mod["main"].params[0].ty.shape)


def save_ir(path: str | os.PathLike, mod: tvm.IRModule) -> None:
    """The module as TVM JSON, constants included, for the next stage."""
    write_text_atomic(path, tvm.ir.save_json(mod))


def load_ir(path: str | os.PathLike) -> tvm.IRModule:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such TVM module file")
    mod = tvm.ir.load_json(path.read_text(encoding="utf-8"))
    if not isinstance(mod, tvm.IRModule):
        raise InputError(f"{path}: holds a {type(mod).__name__}, not an IRModule (write it with frontend.save_ir)")
    return mod


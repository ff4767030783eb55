"""Ingest: read an ONNX or TFLite model, check it, fix its shapes and import it into Relax."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetvm.errors import ModelError, last_line
from edgetvm.pipeline import onnx_converters, onnx_qoperators, onnx_static_shapes, quantized_import
from edgetvm.pipeline.tensor_spec import TensorSpec

log = logging.getLogger(__name__)

FORMATS = ("onnx", "tflite")


@dataclass
class ImportedModel:
    """A model imported into Relax, with static input shapes.

    Attributes
    ----------
    path : Path
        The model file as given.
    sha256 : str
        Digest of the file's bytes.
    format : str
        ``onnx`` or ``tflite``.
    inputs, outputs : list of TensorSpec
        In the order the Relax ``main`` function takes and returns them.
    mod : tvm.IRModule
        The Relax module (float, or with integer layers for a model that arrived quantized; parameters bound as
        constants).
    input_shapes : dict
        The ``--input-shape`` values that fixed dynamic dimensions (recorded for rebuilding the reference).
    quantization : dict or None
        For a model that arrives quantized (ONNX QDQ or QOperator ops): where its quantization comes from and
        how many conv2d / matmul layers compute on integers (``quantized_import.describe``); None otherwise.
    """

    path: Path
    sha256: str
    format: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    mod: object
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    quantization: dict | None = None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_format(path: Path) -> str:
    """``onnx`` or ``tflite``, from the file's content first and its suffix second.

    Raises
    ------
    ModelError
        For a missing path, a directory, an empty file or a file that is neither format.
    """
    if not path.exists():
        raise ModelError(f"model {path}: no such file")
    if path.is_dir():
        raise ModelError(f"model {path}: is a directory; give the .onnx or .tflite file inside it")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"model {path}: the file is empty")
    with open(path, "rb") as stream:
        head = stream.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    if path.suffix.lower() == ".tflite":
        raise ModelError(
            f"model {path}: not a TFLite flatbuffer (no TFL3 identifier); the file is corrupt or mislabelled"
        )
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":  # ModelProto starts with field 1 (ir_version)
        return "onnx"
    raise ModelError(f"model {path}: not an ONNX or TFLite model; edgetvm reads .onnx and .tflite files")


def load_model(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> ImportedModel:
    """Read, check and import a model.

    Parameters
    ----------
    path : str or Path
        An ``.onnx`` or ``.tflite`` file.
    input_shapes : dict, optional
        Static shapes for inputs with dynamic dimensions (``--input-shape``).

    Raises
    ------
    ModelError
        For unreadable files, dynamic shapes left unfixed and operators TVM cannot import (all listed at once).
    """
    path = Path(path)
    fmt = detect_format(path)
    shapes = dict(input_shapes or {})
    loader = _load_onnx if fmt == "onnx" else _load_tflite
    mod, inputs, output_names, quantization = loader(path, dict(shapes))
    outputs = _output_specs(mod, output_names)
    return ImportedModel(path, file_sha256(path), fmt, inputs, outputs, mod, shapes, quantization)


def _read_onnx(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError, OSError) as err:
        raise ModelError(f"model {path}: cannot be parsed as ONNX (truncated or corrupt file): {err}") from err
    if not model.graph.node:
        raise ModelError(f"model {path}: the ONNX graph has no nodes (truncated or corrupt file)")
    onnx_static_shapes.check_model(model, str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 11:
        raise ModelError(
            f"model {path}: ONNX opset {opset} is too old; edgetvm reads opset 11 and later (re-export it)"
        )
    return model


def unsupported_onnx_ops(model) -> Counter:
    """Op types (``domain::Op`` outside the default domain) that TVM's ONNX importer has no converter for."""
    supported = onnx_converters.supported_ops()
    missing: Counter = Counter()
    for node in model.graph.node:
        if node.domain == "com.microsoft" and node.op_type in onnx_qoperators.MICROSOFT_OPS:
            continue
        if node.domain not in ("", "ai.onnx"):
            missing[f"{node.domain}::{node.op_type}"] += 1
        elif node.op_type not in supported:
            missing[node.op_type] += 1
    return missing


def _format_missing(path: Path, missing: Counter) -> str:
    listed = ", ".join(f"{op} x{count}" for op, count in sorted(missing.items()))
    return f"model {path}: {len(missing)} operator type(s) TVM cannot import: {listed}"


def _load_onnx(path: Path, shapes: dict[str, tuple[int, ...]]):
    from tvm.relax.frontend.onnx import from_onnx

    model = _read_onnx(path)
    missing = unsupported_onnx_ops(model)
    if missing:
        raise ModelError(_format_missing(path, missing))
    model = onnx_static_shapes.fix_input_shapes(model, shapes)
    try:
        model = onnx_static_shapes.fold_shape_computations(model)
    except Exception as err:  # onnx shape inference raises InferenceError and others on inconsistent graphs
        raise ModelError(f"model {path}: ONNX shape inference fails: {str(err).splitlines()[0]}") from err
    names = onnx_static_shapes.graph_input_names(model)
    by_name = {inp.name: inp for inp in model.graph.input}
    inputs = []
    for name in names:
        tensor_type = by_name[name].type.tensor_type
        dtype = str(np.dtype(onnx_to_numpy_dtype(tensor_type.elem_type)))
        inputs.append(TensorSpec(name, tuple(onnx_static_shapes.declared_shape(by_name[name])), dtype))
    try:
        with onnx_converters.converters():
            mod = from_onnx(model, dtype_dict={s.name: s.dtype for s in inputs}, keep_params_in_input=False)
    except Exception as err:  # TVM raises TVMError, TypeError, ValueError... from inside converters
        raise ModelError(f"model {path}: TVM's ONNX importer failed: {last_line(err)}") from err
    source = quantized_import.quantization_source(model)
    quantization = None
    if source is not None:
        mod = quantized_import.to_int8(mod, path)
        quantization = quantized_import.describe(mod, source)
    return mod, inputs, [out.name for out in model.graph.output], quantization


def onnx_to_numpy_dtype(elem_type: int):
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(elem_type)


def _load_tflite(path: Path, shapes: dict[str, tuple[int, ...]]):
    from tvm.relax.frontend.tflite import from_tflite, tflite_frontend

    buf = path.read_bytes()
    model = verified_tflite(buf, path)
    try:
        from tflite_runtime.interpreter import Interpreter

        interpreter = Interpreter(model_content=buf)
    except (ValueError, RuntimeError) as err:
        raise ModelError(f"model {path}: TFLite cannot load it (truncated or corrupt file): {last_line(err)}") from err
    subgraph = model.Subgraphs(0)
    converter = tflite_frontend.OperatorConverter(model, subgraph, None, None)
    ops = Counter(converter.get_op_code_str(subgraph.Operators(i)) for i in range(subgraph.OperatorsLength()))
    missing = Counter({op: n for op, n in ops.items() if op not in converter.convert_map})
    if missing:
        raise ModelError(_format_missing(path, missing))
    inputs = []
    for detail in interpreter.get_input_details():
        declared = [int(d) for d in detail.get("shape_signature", detail["shape"])]
        wanted = shapes.pop(detail["name"], None)
        if wanted is None and any(d <= 0 for d in declared):
            raise ModelError(
                f"input {detail['name']!r} has dynamic dimension(s) {declared}: fix them with --input-shape "
                f"{detail['name']}={'x'.join(str(d) if d > 0 else 'N' for d in declared)}"
            )
        shape = tuple(wanted) if wanted else tuple(declared)
        inputs.append(TensorSpec(detail["name"], shape, str(np.dtype(detail["dtype"]))))
    if shapes:
        raise ModelError(
            f"--input-shape names unknown input(s) {sorted(shapes)}; the model's inputs are {[i.name for i in inputs]}"
        )
    try:
        mod = from_tflite(
            model, shape_dict={s.name: s.shape for s in inputs}, dtype_dict={s.name: s.dtype for s in inputs}
        )
    except Exception as err:  # TVM raises many kinds from inside converters
        raise ModelError(f"model {path}: TVM's TFLite importer failed: {last_line(err)}") from err
    return mod, inputs, [d["name"] for d in interpreter.get_output_details()], None


def verified_tflite(buf: bytes, path: Path):
    """Walk every table of the flatbuffer in Python, which checks bounds, before a native runtime reads it.

    tflite-runtime does not verify its input: a truncated file crashes the process instead of raising.
    """
    import struct

    import tflite

    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        for index in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(index)
            code.BuiltinCode(), code.DeprecatedBuiltinCode(), code.CustomCode()
        for index in range(model.BuffersLength()):
            buffer = model.Buffers(index)
            if buffer.Offset() > 1:
                if buffer.Offset() + buffer.Size() > len(buf):
                    raise IndexError(f"buffer {index} lies past the end of the file")
            elif buffer.DataLength():
                buffer.DataAsNumpy()
        if model.SubgraphsLength() < 1:
            raise IndexError("no subgraph")
        for index in range(model.SubgraphsLength()):
            _walk_tflite_subgraph(model.Subgraphs(index), model.BuffersLength(), model.OperatorCodesLength())
    except (struct.error, IndexError, ValueError, TypeError, AttributeError) as err:
        raise ModelError(f"model {path}: the TFLite flatbuffer is truncated or corrupt ({err})") from err
    return model


def _walk_tflite_subgraph(subgraph, n_buffers: int, n_codes: int) -> None:
    n_tensors = subgraph.TensorsLength()
    for index in range(n_tensors):
        tensor = subgraph.Tensors(index)
        tensor.ShapeAsNumpy(), tensor.Name(), tensor.Type(), tensor.Quantization()
        if tensor.ShapeSignatureLength():
            tensor.ShapeSignatureAsNumpy()
        if tensor.Buffer() >= n_buffers:
            raise IndexError(f"tensor {index} names buffer {tensor.Buffer()} of {n_buffers}")
    for index in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(index)
        if op.OpcodeIndex() >= n_codes:
            raise IndexError(f"operator {index} names opcode {op.OpcodeIndex()} of {n_codes}")
        for tensor_index in list(op.InputsAsNumpy()) + list(op.OutputsAsNumpy()):
            if tensor_index >= n_tensors:
                raise IndexError(f"operator {index} names tensor {tensor_index} of {n_tensors}")
        op.BuiltinOptionsType(), op.BuiltinOptions()
    for tensor_index in list(subgraph.InputsAsNumpy()) + list(subgraph.OutputsAsNumpy()):
        if tensor_index >= n_tensors:
            raise IndexError(f"subgraph names tensor {tensor_index} of {n_tensors}")


def _output_specs(mod, names: list[str]) -> list[TensorSpec]:
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if hasattr(ret, "fields") else [ret]
    if len(fields) != len(names):
        names = [f"output{i}" for i in range(len(fields))]
    specs = []
    for name, info in zip(names, fields, strict=True):
        shape = tuple(int(d) for d in info.shape.values) if info.shape is not None else ()
        specs.append(TensorSpec(name, shape, str(info.dtype)))
    return specs

"""UnfoldNarrowConv: a first conv over few channels becomes a conv over (kernel column, channel) pairs with the
same output, which the int8 schemes then quantize."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm
from tvm import relax

from edgetvm.pipeline.ingest import ImportedModel
from edgetvm.pipeline.passes.quant_layers import narrow_layers
from edgetvm.pipeline.passes.unfold_narrow_conv import UnfoldNarrowConv
from edgetvm.pipeline.quantize import quantize
from edgetvm.pipeline.schemes import get_scheme

RNG = np.random.default_rng(0)


def _conv_module(layout: str, shape, kernel: int, stride: int, padding, cin: int = 3, cout: int = 24):
    weight_shape = (kernel, kernel, cin, cout) if layout == "NHWC" else (cout, cin, kernel, kernel)
    weight = relax.const(RNG.standard_normal(weight_shape).astype("float32"))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = relax.op.nn.conv2d(
                x,
                weight,
                strides=stride,
                padding=padding,
                data_layout=layout,
                kernel_layout="HWIO" if layout == "NHWC" else "OIHW",
                out_layout=layout,
            )
            out = bb.emit_output(relax.op.nn.relu(conv))
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, x):
    executable = tvm.compile(mod, "llvm")
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _conv_input_channels(mod) -> list[int]:
    channels = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.nn.conv2d":
                layout = str(value.attrs.data_layout)
                channels.append(int(value.args[0].ty.shape[layout.index("C")]))
    return channels


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize(
    "kernel, stride, padding",
    [(5, 2, [1, 1, 2, 2]), (7, 2, [3, 3, 3, 3]), (5, 1, [2, 0, 2, 1])],  # BlazeFace's; a ResNet stem's; odd pads
)
def test_unfolded_conv_matches_the_original(layout, kernel, stride, padding):
    shape = (1, 97, 101, 3) if layout == "NHWC" else (1, 3, 97, 101)
    mod = _conv_module(layout, shape, kernel, stride, padding)
    unfolded = UnfoldNarrowConv(16)(mod)
    wide = (3 * kernel + 1) // 2 * 2
    assert _conv_input_channels(unfolded) == [wide]
    x = RNG.standard_normal(shape).astype("float32")
    np.testing.assert_allclose(_run(unfolded, x), _run(mod, x), rtol=1e-5, atol=1e-4)


def test_too_few_pairs_and_skipped_layers_stay_as_they_are():
    # PP-OCR's first conv: 3x3 over 3 channels unfolds to 10 channels, fewer than the int8 kernels' 16
    assert _conv_input_channels(UnfoldNarrowConv(16)(_conv_module("NCHW", (1, 3, 16, 16), 3, 2, [1, 1, 1, 1]))) == [3]
    # the trained MNIST CNN's second conv, 3x3 over 8 channels on 14x14: too little work (its dynamic build
    # ran 1.5x slower unfolded)
    mnist_like = _conv_module("NCHW", (1, 8, 14, 14), 3, 1, [1, 1, 1, 1], cin=8, cout=16)
    assert _conv_input_channels(UnfoldNarrowConv(16)(mnist_like)) == [8]
    blazeface_like = _conv_module("NHWC", (1, 64, 64, 3), 5, 2, [1, 1, 2, 2])
    assert _conv_input_channels(UnfoldNarrowConv(16, skip=frozenset({"conv2d_0"}))(blazeface_like)) == [3]
    assert _conv_input_channels(UnfoldNarrowConv(0)(blazeface_like)) == [3]  # a scheme that quantizes every layer


def test_int8_schemes_quantize_an_unfolded_first_conv():
    """BlazeFace's first conv (5x5 stride 2 over RGB) stayed float in int8 builds, 20-25% of their time: unfolded,
    it runs on the int8 kernels (BlazeFace w8a8-static 0.388 -> 0.366 ms, w8a8-dynamic 0.486 -> 0.460)."""
    mod = _conv_module("NHWC", (1, 64, 64, 3), 5, 2, [1, 1, 2, 2])  # 32 x 32 x 24 outputs x 75: 1.8 million
    fields = {f.name: None for f in dataclasses.fields(ImportedModel)}
    imported = ImportedModel(**{**fields, "path": "first-layer.tflite", "mod": mod})
    scheme = get_scheme("w8a8-dynamic")
    assert narrow_layers(mod, scheme.min_input_channels) == ["conv2d_0"]
    quantized = quantize(imported, scheme).mod
    convs = [
        binding.value
        for block in quantized["main"].body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call) and getattr(binding.value.op, "name", "") == "relax.nn.conv2d"
    ]
    assert [str(conv.args[0].ty.dtype) for conv in convs] == ["int8"]
    assert _conv_input_channels(quantized) == [16]
    kept = quantize(imported, scheme, keep_float=frozenset({"conv2d_0"})).mod  # mixed precision keeps it as it was
    assert _conv_input_channels(kept) == [3]
    x = RNG.uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    reference, actual = _run(mod, x), _run(quantized, x)
    cosine = float((reference * actual).sum() / np.linalg.norm(reference) / np.linalg.norm(actual))
    assert cosine > 0.999, cosine

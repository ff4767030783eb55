"""Layers int8 does not pay for stay float in the int8 schemes: narrow ones (a first conv over 3 colour channels),
small ones and ones of little input reuse in the dynamic scheme (a squeeze-excite's vector layers, 1x1
projections to few channels), and depthwise convs on targets without a
faster int8 depthwise kernel (``TargetPreset.int8_depthwise``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from edgetvm.pipeline.ingest import ImportedModel
from edgetvm.pipeline.passes.quant_layers import depthwise_layers, low_reuse_layers, narrow_layers, small_layers
from edgetvm.pipeline.quantize import quantize
from edgetvm.pipeline.schemes import get_scheme
from edgetvm.targets import resolve_target

RNG = np.random.default_rng(0)


def _module() -> tvm.IRModule:
    """conv 3->16 (first layer), depthwise 16, conv 16->24."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 3, 12, 12], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(RNG.standard_normal((16, 3, 3, 3)).astype("float32"))))
            w_dw = RNG.standard_normal((16, 1, 3, 3)).astype("float32")
            y = bb.emit(relax.op.nn.conv2d(y, relax.const(w_dw), groups=16))
            w = RNG.standard_normal((24, 16, 1, 1)).astype("float32")
            out = bb.emit_output(relax.op.nn.conv2d(y, relax.const(w)))
        bb.emit_func_output(out)
    return bb.get()


def _conv_dtypes(mod: tvm.IRModule) -> list[str]:
    return [
        str(b.value.args[0].ty.dtype)
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.nn.conv2d"
    ]


def test_narrow_layers_are_one_group_convs_with_few_input_channels():
    mod = _module()
    assert narrow_layers(mod, 16) == ["conv2d_0"]  # the depthwise conv (one input channel a group) is not narrow
    assert narrow_layers(mod, 0) == []
    assert narrow_layers(mod, 17) == ["conv2d_0", "conv2d_2"]


def _imported() -> ImportedModel:
    fields = {f.name: None for f in dataclasses.fields(ImportedModel)}
    return ImportedModel(**{**fields, "path": "first-layer.onnx", "mod": _module()})


def test_int8_scheme_keeps_the_first_layer_float():
    imported = _imported()
    scheme = dataclasses.replace(get_scheme("w8a8-dynamic"), min_macs=0, min_macs_per_input=0)
    assert scheme.min_input_channels == 16
    assert _conv_dtypes(quantize(imported, scheme).mod) == ["float32", "int8", "int8"]
    every_layer = dataclasses.replace(scheme, min_input_channels=0)
    assert _conv_dtypes(quantize(imported, every_layer).mod) == ["int8", "int8", "int8"]


def test_depthwise_layers_are_grouped_convs_with_one_input_channel_a_group():
    assert depthwise_layers(_module()) == ["conv2d_1"]


def test_targets_without_int8_depthwise_keep_depthwise_convs_float():
    scheme = dataclasses.replace(get_scheme("w8a8-dynamic"), min_input_channels=0, min_macs=0, min_macs_per_input=0)
    assert _conv_dtypes(quantize(_imported(), scheme, int8_depthwise=False).mod) == ["int8", "float32", "int8"]
    # x86 (AVX2 here) has no faster int8 depthwise; the Pi targets quantize them (NEON widening multiply-adds)
    assert resolve_target("x86").int8_depthwise is False
    assert resolve_target("rpi4").int8_depthwise is True


def test_small_layers_do_fewer_multiply_adds_than_the_minimum():
    # conv 3->16 3x3 on 10x10 outputs: 43200 multiply-adds; depthwise 16 3x3 on 8x8: 9216; conv 16->24 1x1 on 8x8: 24576
    mod = _module()
    assert small_layers(mod, 0) == []
    assert small_layers(mod, 10_000) == ["conv2d_1"]
    assert small_layers(mod, 1 << 15) == ["conv2d_1", "conv2d_2"]


def test_dynamic_scheme_keeps_small_layers_float():
    """A dynamic layer's input costs a max|x| pass and a quantize pass at run time: on a squeeze-excite's vector
    layers that is more than int8 saves (PP-OCR classifier, w8a8-dynamic: 316 -> 310 us with them float)."""
    scheme = dataclasses.replace(get_scheme("w8a8-dynamic"), min_input_channels=0, min_macs_per_input=0)
    assert scheme.min_macs == 1 << 15
    assert _conv_dtypes(quantize(_imported(), scheme).mod) == ["int8", "float32", "float32"]
    assert get_scheme("w8a8-static").min_macs == 0  # static quantizes in the producer's epilogue: no extra pass


def test_low_reuse_layers_do_few_multiply_adds_per_input_value():
    # conv 3->16 3x3: 43200 multiply-adds over 432 input values (100 each); conv 16->24 1x1: 24 each; the
    # depthwise conv (9 each) is the target's choice, never listed
    mod = _module()
    assert low_reuse_layers(mod, 0) == []
    assert low_reuse_layers(mod, 40) == ["conv2d_2"]
    assert low_reuse_layers(mod, 101) == ["conv2d_0", "conv2d_2"]


def test_dynamic_scheme_keeps_layers_of_little_input_reuse_float():
    """A dynamic layer's input is read twice more at run time (max|x|, quantize): a 1x1 projection to 16 or 32
    channels saves less in int8 than that costs (PP-OCR classifier, w8a8-dynamic: 0.93x -> 1.02x of float)."""
    assert get_scheme("w8a8-dynamic").min_macs_per_input == 16
    scheme = dataclasses.replace(get_scheme("w8a8-dynamic"), min_input_channels=0, min_macs=0, min_macs_per_input=40)
    assert _conv_dtypes(quantize(_imported(), scheme, int8_depthwise=True).mod) == ["int8", "int8", "float32"]
    assert get_scheme("w8a8-static").min_macs_per_input == 0  # no run-time max|x| pass to pay for


def test_a_scheme_that_quantizes_no_layer_says_so(caplog):
    scheme = get_scheme("w8a8-dynamic")  # every layer of the small module is narrow, small or depthwise here
    with caplog.at_level("WARNING"):
        mod = quantize(_imported(), scheme, int8_depthwise=False).mod
    assert _conv_dtypes(mod) == ["float32", "float32", "float32"]
    assert "w8a8-dynamic: every layer of first-layer.onnx stays float" in caplog.text


def test_the_x86_target_quantizes_convs_from_8_input_channels():
    """In static schemes: its pair kernel sums pairs of channels (the trained CNN's w8a8-static build: 0.97x ->
    1.09x of float). In dynamic schemes only with VNNI, whose quad kernel pays for the run-time quantize (1.07x ->
    1.12x) where the pair kernel did not (0.99x -> 0.90x). The Pi targets keep the scheme's 16 (their dot-form
    kernels sum 16 channels or more)."""
    import dataclasses

    from edgetvm.pipeline.quantize import scheme_for_target
    from edgetvm.targets.presets import llvm_has_vnni

    x86 = resolve_target("x86")
    scheme = get_scheme("w8a8-static")
    assert scheme_for_target(scheme, x86).min_input_channels == 8
    assert scheme_for_target(scheme, resolve_target("rpi4")) is scheme
    dynamic = get_scheme("w8a8-dynamic")
    assert x86.int8_min_input_channels_dynamic == (8 if llvm_has_vnni(x86.tvm_target()) else None)
    avx2 = dataclasses.replace(x86, int8_min_input_channels_dynamic=None)
    vnni = dataclasses.replace(x86, int8_min_input_channels_dynamic=8)
    assert scheme_for_target(dynamic, avx2) is dynamic
    assert scheme_for_target(dynamic, vnni).min_input_channels == 8
    assert scheme_for_target(scheme, vnni).min_input_channels == 8  # each mode its own field
    assert scheme_for_target(get_scheme("none"), vnni) is get_scheme("none")

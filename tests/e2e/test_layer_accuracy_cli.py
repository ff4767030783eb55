"""Per-layer accuracy (compare --per-layer) and mixed precision (compile --quantize --max-accuracy-drop) through
the CLI, on small ONNX models and on BlazeFace."""

import json

import numpy as np
import pytest
from tvm.relax.transform import FoldConstant

from edgetvm.cli import main
from edgetvm.errors import BudgetError
from edgetvm.pipeline.ingest import load_model
from edgetvm.pipeline.layer_accuracy import model_layers
from edgetvm.pipeline.passes.quant_layers import depthwise_layers, low_reuse_layers, narrow_layers


def _feature_model(path):
    """Four convolutions ending in a (1, 512, 1) feature map: no class axis, so the accuracy drop is cosine's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits, nodes, x = [], [], "image"
    for i, (cin, cout) in enumerate([(3, 16), (16, 16), (16, 32), (32, 8)]):
        w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) / np.sqrt(9 * cin)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu" if i < 3 else "Identity", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    inits.append(numpy_helper.from_array(np.array([1, 512, 1], np.int64), "shape"))
    nodes.append(helper.make_node("Reshape", [x, "shape"], ["features"]))
    graph = helper.make_graph(
        nodes,
        "features",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 512, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def feature_model(tmp_path_factory):
    return _feature_model(tmp_path_factory.mktemp("models") / "features.onnx")


def test_per_layer_report_json_and_chart(ops_zoo_path, tmp_path, capsys):
    art = tmp_path / "zoo-w8"
    assert main(["-q", "compile", str(ops_zoo_path), "-t", "x86", "--quantize", "w8a8-dynamic", "-o", str(art)]) == 0
    capsys.readouterr()
    report_path, chart = tmp_path / "layers.json", tmp_path / "layers.png"
    args = ["-q", "compare", str(art), "--per-layer", "--samples", "3", "--json", str(report_path)]
    assert main([*args, "--plot", str(chart)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    keys = [layer.key for layer in model_layers(load_model(ops_zoo_path).mod)]
    assert sorted(layer["key"] for layer in report["layers"]) == sorted(keys) and len(keys) == 6
    # The first conv (3 input channels) stays float in the int8 schemes (min_input_channels), and on x86 so does the
    # depthwise conv (TargetPreset.int8_depthwise, recorded in the manifest): exact, no SQNR. The two 1x1 convs to
    # 28 channels do 28 multiply-adds per input value, enough for w8a8-dynamic (min_macs_per_input 16; they stay
    # float under 40). The matmul stays float (min_macs), but after the int8 conv2d_4 its output is not exact.
    folded = FoldConstant()(load_model(ops_zoo_path).mod)
    assert narrow_layers(folded, 16) == ["conv2d_0"] and depthwise_layers(folded) == ["conv2d_1"]
    assert low_reuse_layers(folded, 40) == ["conv2d_0", "conv2d_2", "conv2d_3", "matmul_0"]
    assert "conv2d_2" not in low_reuse_layers(folded, 16) and "conv2d_3" not in low_reuse_layers(folded, 16)
    narrow = ["conv2d_0", "conv2d_1"]
    assert json.loads((art / "manifest.json").read_text())["quantization"]["int8_depthwise"] is False
    assert [layer["key"] for layer in report["layers"] if layer["sqnr_db"] is None] == narrow
    sqnr = [layer["sqnr_db"] for layer in report["layers"] if layer["key"] not in narrow]
    assert sqnr == sorted(sqnr) and all(10 < value < 80 for value in sqnr)  # quantized: close, not equal
    assert report["samples"] == 3 and report["keep_float"] == [] and report["reference_runtime"] == "onnxruntime"
    assert report["outputs"][0]["top1_agreement"] is not None and report["float_accuracy_drop"] == 0.0
    assert printed.index(report["layers"][0]["key"]) < printed.index(report["layers"][-1]["key"])
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically


def test_per_layer_refuses_a_float_artifact(artifacts, capsys):
    assert main(["-q", "compare", str(artifacts("ops-zoo", "x86")), "--per-layer"]) == 2
    assert "not a quantized artifact" in capsys.readouterr().err


def test_mixed_precision_for_a_board_target_meets_the_budget(feature_model, tmp_path, capsys):
    """The budget lies between the float build's drop and the fully quantized one's: some layer must stay float.
    The target is rpi4: the search measures x86 builds of the same module on this host."""
    quantized = tmp_path / "w8"
    compile_args = ["-q", "compile", str(feature_model), "--quantize", "w8a8-dynamic", "--samples", "4"]
    assert main([*compile_args, "-t", "x86", "-o", str(quantized)]) == 0
    assert (
        main(["-q", "compare", str(quantized), "--per-layer", "--samples", "4", "--json", str(tmp_path / "r.json")])
        == 0
    )
    full = json.loads((tmp_path / "r.json").read_text())
    assert full["accuracy_drop"] > 2 * full["float_accuracy_drop"]
    budget = (full["accuracy_drop"] + full["float_accuracy_drop"]) / 2
    capsys.readouterr()
    mixed = tmp_path / "mixed-rpi4"
    assert main([*compile_args, "-t", "rpi4", "-o", str(mixed), "--max-accuracy-drop", repr(budget)]) == 0
    assert "layers kept in float" in capsys.readouterr().out
    quantization = json.loads((mixed / "manifest.json").read_text())["quantization"]
    search = quantization["mixed_precision"]
    assert quantization["name"] == "w8a8-dynamic" and 1 <= len(quantization["keep_float"]) < 4
    assert search["keep_float"] == quantization["keep_float"] and search["accuracy_drop"] <= budget
    assert search["steps"][0]["keep_float"] == [] and search["steps"][0]["accuracy_drop"] > budget
    assert search["steps"][-1]["next_float"] is None and len(search["steps"]) == len(quantization["keep_float"]) + 1
    # The artifact built with those layers in float measures the same drop (host rebuild from the manifest).
    assert main(["-q", "compare", str(mixed), "--per-layer", "--samples", "4", "--json", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["keep_float"] == quantization["keep_float"]
    assert again["accuracy_drop"] == pytest.approx(search["accuracy_drop"], rel=1e-3)
    assert all(layer["kept_float"] == (layer["key"] in again["keep_float"]) for layer in again["layers"])


def test_an_impossible_budget_exits_5_with_one_line(blazeface_path, tmp_path, capsys):
    """BlazeFace's float build already differs from tflite-runtime (top-1 ties among the regressors)."""
    out = tmp_path / "never"
    code = main(
        ["-q", "compile", str(blazeface_path), "-t", "x86", "--quantize", "w8a8-dynamic", "-o", str(out)]
        + ["--samples", "4", "--max-accuracy-drop", "0.01"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == BudgetError.exit_code
    assert len(err) == 1 and "even with every layer in float" in err[0] and "--max-accuracy-drop" in err[0]
    assert not out.exists()

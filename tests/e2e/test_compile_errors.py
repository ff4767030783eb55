"""Bad models: one clear line on stderr, exit code 2, nothing written."""

import onnx
import pytest
from onnx import TensorProto, helper

from edgetvm.cli import main


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def _compile(capsys, model, tmp_path, *extra):
    out = tmp_path / "out"
    code = main(["compile", str(model), "--target", "x86", "-o", str(out), *extra])
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return code, _one_line_error(capsys)


@pytest.mark.parametrize("cut", [64, 5000, 200000])
def test_truncated_models(tmp_path, capsys, ppocr_cls_path, blazeface_path, cut):
    for source, suffix in ((ppocr_cls_path, ".onnx"), (blazeface_path, ".tflite")):
        bad = tmp_path / f"cut{suffix}"
        bad.write_bytes(source.read_bytes()[:cut])
        code, err = _compile(capsys, bad, tmp_path)
        assert code == 2 and ("truncated or corrupt" in err or "checker" in err), err


def test_empty_directory_and_foreign_files(tmp_path, capsys):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert _compile(capsys, empty, tmp_path) == (2, f"edgetvm compile: error: model {empty}: the file is empty")
    code, err = _compile(capsys, tmp_path, tmp_path)
    assert code == 2 and "is a directory" in err
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code, err = _compile(capsys, text, tmp_path)
    assert code == 2 and "not an ONNX or TFLite model" in err


def test_unsupported_ops_are_listed_all_at_once(tmp_path, capsys):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Softsign", ["a"], ["b"]),
        helper.make_node("Gelu", ["b"], ["c"], domain="com.microsoft"),
        helper.make_node("Gelu", ["c"], ["d"], domain="com.microsoft"),
        helper.make_node("Det", ["x"], ["e"]),
    ]
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    convert_map = _get_convert_map()
    assert "Det" not in convert_map  # ConvInteger was the example until edgetvm's quantized-operator converters
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]),
        ],
        [
            helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 1, 4, 4]),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    )
    path = tmp_path / "ops.onnx"
    onnx.save(model, path)
    code, err = _compile(capsys, path, tmp_path)
    assert code == 2
    assert "com.microsoft::Gelu x2" in err and "Det x1" in err
    assert ("Softsign" in err) == ("Softsign" not in convert_map)


def test_dynamic_model_without_input_shape(tmp_path, capsys, ppocr_cls_path):
    code, err = _compile(capsys, ppocr_cls_path, tmp_path)
    assert code == 2
    assert "input 'x' has dynamic dimension" in err and "--input-shape x=" in err


def test_bad_target_exits_2(tmp_path, capsys, blazeface_path):
    code = main(["compile", str(blazeface_path), "--target", "pdp11", "-o", str(tmp_path / "o")])
    assert code == 2 and "unknown target 'pdp11'" in _one_line_error(capsys)


def test_a_closed_standard_output_is_exit_141_without_a_traceback():
    """``edgetvm ... | head -1``: the reader closes the pipe first, and Python printed two tracebacks."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetvm", "schemes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the interpreter has started: its first write finds the pipe closed
    err = proc.stderr.read().decode()
    assert proc.wait() == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err

"""Shared fixtures. Tests are grouped by what they need: unit/, passes/ (Relax passes, small TVM builds), e2e/ (TVM
builds of real models), hil/ (the emulated board)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetvm.cli import main
from edgetvm.pipeline.bundled_models import bundled_model


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = Path(str(item.fspath)).parent.name
        if group in ("unit", "passes", "e2e", "hil"):
            item.add_marker(getattr(pytest.mark, group))


@pytest.fixture(scope="session")
def blazeface_path() -> Path:
    return bundled_model("blazeface").path()


@pytest.fixture(scope="session")
def ppocr_cls_path() -> Path:
    return bundled_model("ppocr-cls").path()


@pytest.fixture(scope="session")
def ppocr_text_lines(ppocr_cls_path):
    """The PP-OCR classifier's eval set (rendered text lines, half turned by 180 degrees, labelled) and calibration
    set (``pipeline.text_lines``), onnxruntime's float answers on the eval set (``float_answers``), and
    ``against_float(artifact)`` -> (top-1 agreement with those answers, cosines and max abs errors of the outputs
    on the first 32 lines)."""
    from types import SimpleNamespace

    import numpy as np
    import onnxruntime as ort

    from edgetvm.pipeline.bundled_models import model_data
    from edgetvm.pipeline.compare import cosine_similarity
    from edgetvm.pipeline.eval_set import answers, load_eval_set
    from edgetvm.pipeline.package import Package
    from edgetvm.pipeline.run_local import LocalRunner
    from edgetvm.pipeline.tensor_spec import TensorSpec

    data = model_data("ppocr-cls")
    eval_set = load_eval_set(data.eval_set, [TensorSpec("x", (1, 3, 48, 192), "float32")])
    session = ort.InferenceSession(str(ppocr_cls_path), providers=["CPUExecutionProvider"])

    def float_run(sample):
        return session.run(None, sample)

    float_answers = answers(float_run, eval_set)

    def against_float(artifact):
        runner = LocalRunner(Package.load(artifact))

        def run(sample):
            return list(runner.run(sample).values())

        agreement = float((answers(run, eval_set) == float_answers).mean())
        cosines, errors = [], []
        for sample in eval_set.samples[:32]:
            got, expected = run(sample)[0], float_run(sample)[0]
            cosines.append(cosine_similarity(got, expected))
            errors.append(float(np.abs(got - expected).max()))
        return agreement, cosines, errors

    return SimpleNamespace(data=data, eval_set=eval_set, float_answers=float_answers, against_float=against_float)


def _ops_zoo(path: Path) -> Path:
    """A small ONNX CNN with every operator the default schedules cover: strided, depthwise, 1x1 and 3x3 conv,
    ReLU / ReLU6 / hard-swish, a residual add, max / average / global pooling and a dense layer, with channel
    counts that are not whole vectors (28, 12)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits, nodes = [], []

    def weight(name, *shape):
        inits.append(
            numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)
        )
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def conv(x, name, cin, cout, k, stride=1, group=1):
        w = weight(f"{name}_w", cout, cin // group, k, k)
        b = weight(f"{name}_b", cout)
        return node("Conv", [x, w, b], name, kernel_shape=[k, k], strides=[stride] * 2, pads=[k // 2] * 4, group=group)

    x = node("Relu", [conv("image", "c1", 3, 16, 3, stride=2)], "r1")
    x = node("Clip", [conv(x, "dw", 16, 16, 3, group=16), "zero", "six"], "relu6")
    h = conv(x, "c2", 16, 28, 1)
    x = node("HardSwish", [h], "hswish")
    x = node("Add", [conv(x, "c3", 28, 28, 1), x], "residual")
    x = node("MaxPool", [x], "maxpool", kernel_shape=[2, 2], strides=[2, 2])
    x = node("AveragePool", [x], "avgpool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    x = node("Relu", [conv(x, "c4", 28, 12, 3)], "r4")
    x = node("Flatten", [node("GlobalAveragePool", [x], "gap")], "flat")
    x = node("Gemm", [x, weight("fc_w", 10, 12), weight("fc_b", 10)], "logits", transB=1)
    inits += [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(6), "six")]
    graph = helper.make_graph(
        nodes,
        "ops_zoo",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def ops_zoo_path(tmp_path_factory) -> Path:
    return _ops_zoo(tmp_path_factory.mktemp("models") / "ops_zoo.onnx")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, blazeface_path, ppocr_cls_path, ops_zoo_path):
    """Compile on first use: ``artifacts(model, target)`` -> artifact directory."""
    root = tmp_path_factory.mktemp("artifacts")
    models = {
        "blazeface": (blazeface_path, []),
        "ppocr-cls": (ppocr_cls_path, ["--input-shape", "x=1x3x48x192"]),
        "ops-zoo": (ops_zoo_path, []),
    }
    built = {}

    def get(model: str, target: str):
        if (model, target) not in built:
            path, extra = models[model]
            out = root / f"{model}-{target}"
            assert main(["-q", "compile", str(path), *extra, "--target", target, "-o", str(out)]) == 0
            built[model, target] = out
        return built[model, target]

    return get


def _one_conv(path: Path) -> Path:
    """A 3x3 conv + ReLU on a 16x16 image: the smallest model with a reduction to tune."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) / 5, "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "one_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [w, b],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return path


@pytest.fixture(scope="session")
def one_conv_path(tmp_path_factory) -> Path:
    return _one_conv(tmp_path_factory.mktemp("models") / "one_conv.onnx")


MNIST_BATCH = 8


def _batched(model: Path, batch: int, path: Path) -> Path:
    """``model`` with the leading (batch) axis of its inputs and outputs set to ``batch``: its Flatten and Gemms
    take any batch, and a Gemm's input then has a row per sample."""
    import onnx

    proto = onnx.load(model)
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


@pytest.fixture(scope="session")
def mnist_batched_path(tmp_path_factory) -> Path:
    """The trained MNIST CNN taking ``MNIST_BATCH`` images a run ([8, 1, 28, 28] -> [8, 10] logits)."""
    from edgetvm.pipeline.trained_models import trained_model_path

    return _batched(trained_model_path("mnist-cnn"), MNIST_BATCH, tmp_path_factory.mktemp("models") / "mnist-b8.onnx")

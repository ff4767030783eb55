"""A small convolutional classifier in plain numpy: forward, backward, Adam training and ONNX export.

The network is ``[Conv3x3 (pad 1) + ReLU + MaxPool2] x stages -> Flatten -> [Dense + ReLU] -> Dense -> logits``.
Tensors are NCHW float32, as in the exported graph, so the numpy forward is the reference the ONNX model must match.
Convolutions are im2col matrix products, which keeps training on a few thousand images to seconds on one core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

from edgetvm.errors import InputError

Params = dict[str, np.ndarray]

ONNX_OPSET = 13


@dataclass(frozen=True)
class CnnShape:
    """The architecture: conv stage widths, an optional hidden dense layer, the number of classes."""

    in_channels: int = 1
    image_size: int = 28
    conv_channels: tuple[int, ...] = (8, 16)
    hidden: int = 0  # width of a Dense + ReLU before the classifier; 0 for none
    classes: int = 10

    def __post_init__(self):
        if self.image_size % 2 ** len(self.conv_channels):
            raise InputError(
                f"CnnShape: field 'image_size' must be divisible by 2**{len(self.conv_channels)} "
                f"(one 2x2 pooling per conv stage), got {self.image_size}"
            )

    @property
    def flat_features(self) -> int:
        side = self.image_size // 2 ** len(self.conv_channels)
        return self.conv_channels[-1] * side * side


@dataclass(frozen=True)
class TrainOptions:
    """Mini-batch Adam on softmax cross-entropy, the learning rate annealed to zero on a cosine.

    Every epoch shifts each training image by up to ``max_shift`` pixels in x and y (zero fill), which a model
    trained on a few thousand images needs to generalise.
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 2e-3
    max_shift: int = 1
    seed: int = 0


def init_params(shape: CnnShape, rng: np.random.Generator) -> Params:
    """He-normal weights and zero biases, in the order the graph uses them."""
    params: Params = {}
    channels = shape.in_channels
    for i, out in enumerate(shape.conv_channels):
        params[f"conv{i}.weight"] = _he((out, channels, 3, 3), channels * 9, rng)
        params[f"conv{i}.bias"] = np.zeros(out, np.float32)
        channels = out
    features = shape.flat_features
    if shape.hidden:
        params["hidden.weight"] = _he((shape.hidden, features), features, rng)
        params["hidden.bias"] = np.zeros(shape.hidden, np.float32)
        features = shape.hidden
    params["classifier.weight"] = _he((shape.classes, features), features, rng)
    params["classifier.bias"] = np.zeros(shape.classes, np.float32)
    return params


def forward(params: Params, images: np.ndarray) -> np.ndarray:
    """Logits ``[N, classes]`` of float32 images ``[N, C, H, W]``."""
    return _forward(params, images, tape=None)


def predict(params: Params, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Predicted class per image, computed in batches to bound memory."""
    return np.concatenate(
        [forward(params, images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]
    )


def train(shape: CnnShape, options: TrainOptions, images: np.ndarray, labels: np.ndarray) -> Params:
    """Train from a seeded initialisation: the same inputs give the same weights on one machine and thread count."""
    rng = np.random.default_rng(options.seed)
    params = init_params(shape, rng)
    adam = _Adam(params)
    steps_per_epoch = -(-len(images) // options.batch_size)
    total_steps = options.epochs * steps_per_epoch
    for epoch in range(options.epochs):
        shifted = _random_shift(images, options.max_shift, rng)
        order = rng.permutation(len(images))
        for i, start in enumerate(range(0, len(images), options.batch_size)):
            batch = order[start : start + options.batch_size]
            tape: list = []
            logits = _forward(params, shifted[batch], tape)
            progress = (epoch * steps_per_epoch + i) / total_steps
            learning_rate = options.learning_rate * 0.5 * (1 + np.cos(np.pi * progress))
            adam.step(_backward(params, tape, _cross_entropy_grad(logits, labels[batch])), learning_rate)
    return params


def to_onnx(params: Params, shape: CnnShape, input_name: str = "image", output_name: str = "logits") -> onnx.ModelProto:
    """The network as an ONNX graph of Conv, Relu, MaxPool, Flatten and Gemm, batch fixed to 1."""
    nodes = []
    x = input_name
    for i in range(len(shape.conv_channels)):
        conv, relu, pool = f"conv{i}", f"relu{i}", f"pool{i}"
        nodes += [
            helper.make_node(
                "Conv", [x, f"{conv}.weight", f"{conv}.bias"], [conv], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
            ),
            helper.make_node("Relu", [conv], [relu]),
            helper.make_node("MaxPool", [relu], [pool], kernel_shape=[2, 2], strides=[2, 2]),
        ]
        x = pool
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    x = "flat"
    if shape.hidden:
        nodes += [
            helper.make_node("Gemm", [x, "hidden.weight", "hidden.bias"], ["hidden"], transB=1),
            helper.make_node("Relu", ["hidden"], ["hidden_relu"]),
        ]
        x = "hidden_relu"
    nodes.append(helper.make_node("Gemm", [x, "classifier.weight", "classifier.bias"], [output_name], transB=1))
    side = shape.image_size
    graph = helper.make_graph(
        nodes,
        "numpy_cnn",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, shape.in_channels, side, side])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, shape.classes])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(value), name) for name, value in params.items()],
    )
    opset = helper.make_opsetid("", ONNX_OPSET)
    # The lowest IR version for the opset, so that older runtimes (a board's onnxruntime) can load the file too.
    return helper.make_model(
        graph, opset_imports=[opset], ir_version=helper.find_min_ir_version_for([opset]), producer_name="edgetvm"
    )


def _random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each NCHW image moved by its own random offset of at most ``max_shift`` pixels per axis, zero filled."""
    if not max_shift:
        return images
    n, _, h, w = images.shape
    pad = ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift))
    windows = sliding_window_view(np.pad(images, pad), (h, w), axis=(2, 3))  # [N, C, dy, dx, H, W]
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    return windows[np.arange(n), :, dy, dx]


def _he(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _forward(params: Params, images: np.ndarray, tape: list | None) -> np.ndarray:
    """The forward pass; with a ``tape``, it records what ``_backward`` needs.

    Inside, activations are NHWC: im2col rows then come out in pixel order and convolution outputs need no transpose.
    """
    x = images.transpose(0, 2, 3, 1)
    stage = 0
    while f"conv{stage}.weight" in params:
        cols = _im2col(x)
        weight = params[f"conv{stage}.weight"]
        n, h, w, _ = x.shape
        out = np.maximum(cols @ weight.reshape(len(weight), -1).T + params[f"conv{stage}.bias"], 0)
        out = out.reshape(n, h, w, -1)
        pooled = _max_pool(out)
        if tape is not None:
            tape.append((x.shape, cols, out, pooled))
        x = pooled
        stage += 1
    x = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # flatten in NCHW order, as ONNX Flatten does
    if "hidden.weight" in params:
        hidden = np.maximum(x @ params["hidden.weight"].T + params["hidden.bias"], 0)
        if tape is not None:
            tape.append(x)
        x = hidden
    if tape is not None:
        tape.append(x)
    return x @ params["classifier.weight"].T + params["classifier.bias"]


def _backward(params: Params, tape: list, dlogits: np.ndarray) -> Params:
    """Gradients of every parameter, given the loss gradient on the logits."""
    grads: Params = {}
    x = tape.pop()
    grads["classifier.weight"] = dlogits.T @ x
    grads["classifier.bias"] = dlogits.sum(0)
    dx = dlogits @ params["classifier.weight"]
    if "hidden.weight" in params:
        dx = dx * (x > 0)
        x = tape.pop()
        grads["hidden.weight"] = dx.T @ x
        grads["hidden.bias"] = dx.sum(0)
        dx = dx @ params["hidden.weight"]
    n, h, w, c = tape[-1][3].shape
    dx = dx.reshape(n, c, h, w).transpose(0, 2, 3, 1)
    for stage in reversed(range(len(tape))):
        in_shape, cols, out, pooled = tape[stage]
        dout = _max_pool_backward(dx, out, pooled) * (out > 0)
        weight = params[f"conv{stage}.weight"]
        dflat = dout.reshape(-1, len(weight))
        grads[f"conv{stage}.weight"] = (dflat.T @ cols).reshape(weight.shape)
        grads[f"conv{stage}.bias"] = dflat.sum(0)
        if stage:  # the input image needs no gradient
            dx = _col2im(dflat @ weight.reshape(len(weight), -1), in_shape)
    return grads


def _im2col(x: np.ndarray) -> np.ndarray:
    """NHWC ``[N, H, W, C]`` -> ``[N*H*W, C*9]``: each pixel's zero-padded 3x3 neighbourhood, in ``(C, 3, 3)``
    order like the rows of an ONNX Conv weight."""
    n, h, w, c = x.shape
    windows = sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), axis=(1, 2))
    return windows.reshape(n * h * w, c * 9)


def _col2im(dcols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The adjoint of ``_im2col``: sum every row's 3x3 gradients back onto the pixels they came from."""
    n, h, w, c = shape
    d = dcols.reshape(n, h, w, c, 3, 3)
    padded = np.zeros((n, h + 2, w + 2, c), dcols.dtype)
    for i in range(3):
        for j in range(3):
            padded[:, i : i + h, j : j + w] += d[..., i, j]
    return padded[:, 1:-1, 1:-1]


_QUADRANTS = ((0, 0), (0, 1), (1, 0), (1, 1))


def _max_pool(x: np.ndarray) -> np.ndarray:
    """2x2 stride-2 max pooling of NHWC activations."""
    return np.maximum(np.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]), np.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


def _max_pool_backward(dout: np.ndarray, x: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """Route each pooled gradient to the input that won (the first one, on ties)."""
    dx = np.zeros_like(x)
    routed = np.zeros(pooled.shape, bool)
    for i, j in _QUADRANTS:
        winner = (x[:, i::2, j::2] == pooled) & ~routed
        dx[:, i::2, j::2] = dout * winner
        routed |= winner
    return dx


def _cross_entropy_grad(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Gradient of the mean softmax cross-entropy with respect to the logits."""
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    probs = shifted / shifted.sum(1, keepdims=True)
    probs[np.arange(len(labels)), labels] -= 1
    return probs / len(labels)


class _Adam:
    def __init__(self, params: Params, beta1: float = 0.9, beta2: float = 0.999):
        self.params, self.beta1, self.beta2 = params, beta1, beta2
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: Params, learning_rate: float) -> None:
        self.t += 1
        scale = learning_rate * np.sqrt(1 - self.beta2**self.t) / (1 - self.beta1**self.t)
        for name, grad in grads.items():
            self.m[name] = self.beta1 * self.m[name] + (1 - self.beta1) * grad
            self.v[name] = self.beta2 * self.v[name] + (1 - self.beta2) * grad * grad
            self.params[name] -= (scale * self.m[name] / (np.sqrt(self.v[name]) + 1e-8)).astype(np.float32)

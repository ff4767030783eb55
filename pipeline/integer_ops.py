"""Relax builders for integer conv2d / matmul with zero points: int8 x int8 -> int32, exactly.

ONNX quantized layers compute ``sum((x - x_zp) * (w - w_zp))`` in int32. The builders here produce that sum in the
form edgetvm's int8 kernels recognise (``conv2d`` / ``matmul`` of an int8 activation and an int8 constant weight,
``out_dtype="int32"``) plus constant or scalar corrections:

- uint8 activations are shifted to int8 (``x - 128``, exact), the zero point with them (``zp' = zp - 128``);
- the activation zero point comes out of the sum as ``zp' * sum(w)`` per output channel (a constant, times a
  run-time scalar when ``zp`` is computed in the graph, as with ``DynamicQuantizeLinear``);
- padding is applied explicitly with ``zp'`` (the padded value of ``x - zp`` must be 0), then the conv has none;
- a constant weight zero point is subtracted at build time. When ``w - w_zp`` does not fit int8 (weights that
  the quantizer treated as activations, with an asymmetric zero point), both operands are held in int16: the
  sum stays exact, the int8 dot kernels do not apply to that layer.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

INT8_RANGE = (-128, 127)


def is_scalar(expr: relax.Expr) -> bool:
    """A tensor with one element (rank 0, or every dimension 1)."""
    info = getattr(expr, "ty", None)
    if not isinstance(info, relax.TensorType) or info.shape is None:
        return False
    return all(int(d) == 1 for d in info.shape.values)


def shifted_activation(x: relax.Expr, zero_point: relax.Expr | int) -> tuple[relax.Expr, relax.Expr | int]:
    """``(x_i8, zp')`` with ``x - zp == x_i8 - zp'``: uint8 ``x`` moves to int8 by ``- 128``.

    ``zero_point`` is an int (a constant) or a scalar Relax expression (computed in the graph); ``zp'`` has the
    same kind, an int32 scalar expression for the latter.
    """
    dtype = str(x.ty.dtype)
    if dtype not in ("int8", "uint8"):
        raise ValueError(f"integer layers take int8 or uint8 activations, got {dtype}")
    shift = 128 if dtype == "uint8" else 0
    if shift:
        x = relax.op.astype(relax.op.subtract(relax.op.astype(x, "int16"), relax.const(128, "int16")), "int8")
    if isinstance(zero_point, int | np.integer):
        return x, int(zero_point) - shift
    zp = relax.op.reshape(relax.op.astype(zero_point, "int32"), ())
    return x, relax.op.subtract(zp, relax.const(shift, "int32")) if shift else zp


def integer_weight(weight: np.ndarray, zero_point: np.ndarray, channel_axis: int) -> np.ndarray:
    """``weight - zero_point`` (per tensor, or per ``channel_axis``), int8 when it fits, else int16."""
    zp = np.asarray(zero_point, np.int32)
    if zp.size > 1:
        shape = [1] * weight.ndim
        shape[channel_axis] = -1
        zp = zp.reshape(shape)
    shifted = weight.astype(np.int32) - zp
    fits = shifted.min(initial=0) >= INT8_RANGE[0] and shifted.max(initial=0) <= INT8_RANGE[1]
    return shifted.astype(np.int8 if fits else np.int16)


def _operands(x_i8: relax.Expr, weight: np.ndarray) -> tuple[relax.Expr, relax.Expr]:
    if weight.dtype == np.int16:
        return relax.op.astype(x_i8, "int16"), relax.const(weight)
    return x_i8, relax.const(weight)


def _correction(acc: relax.Expr, zp: relax.Expr | int, weight_sums: np.ndarray) -> relax.Expr:
    """``acc - zp' * weight_sums`` (``weight_sums`` broadcasts over ``acc``)."""
    if isinstance(zp, int):
        if zp == 0:
            return acc
        return relax.op.subtract(acc, relax.const((zp * weight_sums).astype(np.int32)))
    return relax.op.subtract(acc, relax.op.multiply(relax.const(weight_sums.astype(np.int32)), zp))


def _pad(x: relax.Expr, size: tuple[int, int], padding: tuple[int, int, int, int], zp: relax.Expr | int) -> relax.Expr:
    """NCHW ``x`` of spatial ``size`` padded (top, left, bottom, right) with ``zp'``."""
    top, left, bottom, right = padding
    width = [0, 0, 0, 0, top, bottom, left, right]
    if isinstance(zp, int):
        return relax.op.nn.pad(x, width, pad_value=float(zp))
    # Relax pads with a constant only: pad with 0, then add zp' on the border (exact: the border holds 0).
    height, breadth = size
    border = np.ones((1, 1, height + top + bottom, breadth + left + right), np.int8)
    border[:, :, top : top + height, left : left + breadth] = 0
    zp_i8 = relax.op.astype(zp, "int8")
    return relax.op.add(relax.op.nn.pad(x, width, pad_value=0.0), relax.op.multiply(relax.const(border), zp_i8))


def integer_conv2d(
    x: relax.Expr,
    x_zero_point: relax.Expr | int,
    weight: np.ndarray,
    weight_zero_point: np.ndarray,
    strides,
    padding,
    dilation,
    groups: int,
) -> relax.Expr:
    """int32 ``conv2d(x - x_zp, weight - w_zp)`` for NCHW int8/uint8 ``x`` and a constant OIHW integer weight."""
    x_i8, zp = shifted_activation(x, x_zero_point)
    w = integer_weight(weight, weight_zero_point, 0)
    padding = tuple(int(p) for p in padding)
    if any(padding) and not (isinstance(zp, int) and zp == 0):
        size = tuple(int(d) for d in x.ty.shape.values[2:])
        x_i8, padding = _pad(x_i8, size, padding, zp), (0, 0, 0, 0)
    data, kernel = _operands(x_i8, w)
    acc = relax.op.nn.conv2d(
        data,
        kernel,
        strides=[int(s) for s in strides],
        padding=list(padding),
        dilation=[int(d) for d in dilation],
        groups=int(groups),
        out_dtype="int32",
    )
    sums = w.astype(np.int64).reshape(w.shape[0], -1).sum(axis=1).reshape(1, -1, 1, 1)
    return _correction(acc, zp, sums)


def integer_matmul(
    x: relax.Expr, x_zero_point: relax.Expr | int, weight: np.ndarray, weight_zero_point: np.ndarray
) -> relax.Expr:
    """int32 ``matmul(x - x_zp, weight - w_zp)`` for int8/uint8 ``x`` and a constant [K, N] integer weight."""
    x_i8, zp = shifted_activation(x, x_zero_point)
    w = integer_weight(weight, weight_zero_point, weight.ndim - 1)
    data, kernel = _operands(x_i8, w)
    acc = relax.op.matmul(data, kernel, out_dtype="int32")
    return _correction(acc, zp, w.astype(np.int64).sum(axis=-2))

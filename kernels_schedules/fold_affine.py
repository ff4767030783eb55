"""Pass: chains of elementwise ops with constants collapsed to one multiply-add, and folded into float weights.

After ``DecomposeOpsForInference`` a batch norm is ``(x - mean) / sqrt(var + eps) * gamma + beta``: four ops with
per-channel constants, a division among them, that ``FoldConstant`` cannot merge because each takes the
previous result. They fuse into the conv's epilogue, where a vector division costs as much as several
multiply-adds: for a 1x1 conv with few input channels (PP-OCR's, MobileNet's) the epilogue takes longer than
the conv. The dequantize of an int8 layer (``* s_x * s_w``), a hard-swish's ``/ 6`` and the quantize of the
next layer's input (``/ s``) add more of them. This pass

1. rewrites ``x / c`` (float ``c`` constant) as ``x * (1 / c)``, the way onnxruntime and TFLite compute it
   (within an ulp of the division);
2. collapses every chain of ``add`` / ``subtract`` / ``multiply`` with constants into ``x * a + b``, composing
   only through values used once (a value with other users is computed anyway, so later ops start from it);
3. folds a per-output-channel ``a`` into the constant float weights of the conv2d / matmul that produced ``x``
   (used only there), so the float epilogue is a bias add;
4. folds an ``a`` (with no ``b``) into the smaller operand of the product ``x = h * g`` that made ``x`` (used only
   there; ``g`` broadcast over ``h``): a squeeze-excite gate times the map, quantized for the next int8 layer,
   ``round(h * g * (1 / s))``, becomes ``round(h * (g / s))``, one multiply per map element fewer, the other on the
   gate's few values (within an ulp before the rounding).

The chain's constants are combined in float64 and stored in the chain's dtype. Run ``FoldConstant`` after it.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from edgetvm.pipeline.passes.bindings import op_name, use_counts

_AFFINE_OPS = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")
_FLOAT_DTYPES = ("float32", "float16", "float64")


def _constant(expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst) and hasattr(expr.value, "numpy"):
        return expr.value.numpy().astype(np.float64)
    return None


def _shape(expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape)
    except TypeError:  # symbolic dimensions
        return None


class _Affine:
    """``root * scale + shift`` with numpy constants (float64), broadcastable against the root."""

    def __init__(self, root: relax.Expr, scale: np.ndarray, shift: np.ndarray, ops: int):
        self.root, self.scale, self.shift, self.ops = root, scale, shift, ops

    def then(self, op: str, constant: np.ndarray, constant_first: bool) -> _Affine | None:
        if op == "relax.add":
            return _Affine(self.root, self.scale, self.shift + constant, self.ops + 1)
        if op == "relax.multiply":
            return _Affine(self.root, self.scale * constant, self.shift * constant, self.ops + 1)
        if op == "relax.subtract":
            if constant_first:  # c - x
                return _Affine(self.root, -self.scale, constant - self.shift, self.ops + 1)
            return _Affine(self.root, self.scale, self.shift - constant, self.ops + 1)
        if op == "relax.divide" and not constant_first:
            return _Affine(self.root, self.scale / constant, self.shift / constant, self.ops + 1)
        return None


@mutator
class _AffineFolder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, func: relax.Function):
        super().__init__(mod)
        self.uses = use_counts(func)
        self.continued = _continued_chains(func, self.uses)
        self.origin: dict = {}  # emitted var -> the original var it binds
        self.chains: dict = {}  # original var -> its value as an affine chain of a root
        self.bound: dict = {}  # original var -> its (rewritten) value

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        chain = self._chain_of(value)
        if chain is not None:
            self.chains[binding.var] = chain
            folds_into_product = self._into_product(chain.root, chain.scale, chain.shift) is not None
            collapses = chain.ops > 1 or op_name(value) == "relax.divide" or folds_into_product
            if collapses and binding.var not in self.continued:  # else its one user takes the chain further
                value = self._emit_chain(chain, str(binding.var.ty.dtype))
        name = binding.var.name
        if isinstance(binding.var, relax.DataflowVar) or not self.builder_.current_block_is_dataflow():
            new_var = self.builder_.emit(value, name_hint=name)
        else:
            new_var = self.builder_.emit_output(value, name_hint=name)
        self.origin[new_var] = binding.var
        self.bound[binding.var] = value
        self.set_var_remap(binding.var, new_var)

    def _chain_of(self, value) -> _Affine | None:
        op = op_name(value)
        if op not in _AFFINE_OPS or str(value.ty.dtype) not in _FLOAT_DTYPES:
            return None
        out_shape = _shape(value)
        lhs, rhs = value.args
        if out_shape is None or (_constant(lhs) is None) == (_constant(rhs) is None):
            return None
        operand, constant, constant_first = (
            (lhs, _constant(rhs), False) if _constant(lhs) is None else (rhs, _constant(lhs), True)
        )
        chain = self._start(operand).then(op, constant, constant_first and op in ("relax.subtract", "relax.divide"))
        root_shape = None if chain is None else _shape(chain.root)
        if root_shape is None:
            return None
        try:
            combined = np.broadcast_shapes(root_shape, chain.scale.shape, chain.shift.shape)
        except ValueError:
            return None
        return chain if combined == out_shape else None

    def _start(self, operand) -> _Affine:
        """The chain ``operand`` continues: its own when it is a chain used only here, else ``operand * 1 + 0``."""
        original = self.origin.get(operand) if isinstance(operand, relax.Var) else None
        if original is not None and original in self.chains and self.uses.get(original, 0) == 1:
            return self.chains[original]
        return _Affine(operand, np.ones(()), np.zeros(()), 0)

    def _emit_chain(self, chain: _Affine, dtype: str) -> relax.Expr:
        root, scale = self._fold_into_weights(chain.root, chain.scale)
        shift = chain.shift
        operands = self._into_product(root, scale, shift)
        if operands is not None:
            larger, smaller = operands
            scaled = self.builder_.emit(relax.op.multiply(smaller, relax.const(scale.astype(dtype), dtype)))
            return relax.op.multiply(larger, scaled)
        result = root
        if not np.all(scale == 1):
            product = relax.op.multiply(result, relax.const(scale.astype(dtype), dtype))
            if not np.any(shift != 0):
                return product
            result = self.builder_.emit(product)
        if np.any(shift != 0) or result.same_as(chain.root):
            return relax.op.add(result, relax.const(shift.astype(dtype), dtype))
        return relax.op.add(result, relax.const(np.zeros((), dtype), dtype))  # keep a call: the binding needs one

    def _into_product(self, root, scale: np.ndarray, shift: np.ndarray) -> tuple[relax.Expr, relax.Expr] | None:
        """``(h, g)`` when the chain is ``root * scale`` (no shift) with ``root = h * g`` used only here and
        ``scale`` fitting ``g``'s shape, ``g`` the operand with fewer elements (step 4 of the module docstring)."""
        original = self.origin.get(root) if isinstance(root, relax.Var) else None
        if original is None or self.uses.get(original, 0) != 1 or np.any(shift != 0):
            return None
        product = self.bound[original]
        if op_name(product) != "relax.multiply" or any(_constant(arg) is not None for arg in product.args):
            return None
        shapes = [_shape(arg) for arg in product.args]
        if None in shapes or str(product.ty.dtype) not in _FLOAT_DTYPES:
            return None
        sizes = [int(np.prod(shape)) for shape in shapes]
        if sizes[0] == sizes[1]:
            return None
        larger, smaller = (0, 1) if sizes[0] > sizes[1] else (1, 0)
        try:
            fits = np.broadcast_shapes(shapes[smaller], scale.shape) == shapes[smaller]
        except ValueError:
            fits = False
        if not fits or shapes[larger] != _shape(product):
            return None
        return product.args[larger], product.args[smaller]

    def _fold_into_weights(self, root, scale: np.ndarray):
        """``conv2d(x, W) * a`` / ``matmul(x, W) * a`` with per-output-channel ``a`` -> the layer with ``W * a``."""
        original = self.origin.get(root) if isinstance(root, relax.Var) else None
        if original is None or self.uses.get(original, 0) != 1:
            return root, scale
        layer = self.bound[original]
        op = op_name(layer)
        if op not in ("relax.nn.conv2d", "relax.matmul") or len(layer.args) != 2:
            return root, scale
        data, weight = layer.args
        weights = _constant(weight)
        out_shape = _shape(layer)
        if weights is None or out_shape is None or str(weight.ty.dtype) not in _FLOAT_DTYPES:
            return root, scale
        per_channel = _per_output_channel(scale, out_shape, op)
        if per_channel is None:
            return root, scale
        if op == "relax.matmul":
            if weights.ndim != 2:
                return root, scale
            folded = weights * per_channel[None, :]
        else:
            attrs = layer.attrs
            if str(attrs.kernel_layout) != "OIHW" or str(attrs.out_layout or attrs.data_layout) != "NCHW":
                return root, scale
            folded = weights * per_channel[:, None, None, None]
        dtype = str(weight.ty.dtype)
        new_layer = relax.Call(layer.op, [data, relax.const(folded.astype(dtype), dtype)], layer.attrs)
        return self.builder_.emit(new_layer), np.ones(())


def _continued_chains(func: relax.Function, uses: dict) -> set:
    """Vars used once, by an add/subtract/multiply/divide with a constant: their chain goes on in that user."""
    continued = set()
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if op_name(value) not in _AFFINE_OPS:
                continue
            lhs, rhs = value.args
            for operand, other in ((lhs, rhs), (rhs, lhs)):
                if isinstance(operand, relax.Var) and _constant(other) is not None and uses.get(operand, 0) == 1:
                    continued.add(operand)
    return continued


def _per_output_channel(scale: np.ndarray, out_shape: tuple[int, ...], op: str) -> np.ndarray | None:
    """``scale`` as a vector over the layer's output channels (NCHW conv: axis 1; matmul: the last), if it is
    constant along every other axis."""
    if scale.ndim == 0:
        return None  # a scalar stays in the epilogue: one multiply, nothing gained by folding
    channels_axis = 1 if op == "relax.nn.conv2d" else len(out_shape) - 1
    full = np.broadcast_to(scale, np.broadcast_shapes(scale.shape, out_shape))
    if full.shape != out_shape:
        return None
    moved = np.moveaxis(full, channels_axis, -1).reshape(-1, out_shape[channels_axis])
    if not np.all(moved == moved[:1]):
        return None
    return moved[0]


@tvm.transform.module_pass(opt_level=0, name="FoldAffine")
class FoldAffine:
    """The pass; use as ``FoldAffine()`` and follow it with ``FoldConstant``."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updated = mod
        for gvar, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            folder = _AffineFolder(updated, func)
            new_func = folder.visit_expr(func)
            updated = folder.builder_.get()
            updated[gvar] = new_func
        return relax.transform.DeadCodeElimination()(updated)

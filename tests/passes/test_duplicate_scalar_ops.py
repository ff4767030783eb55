"""DuplicateScalarOps: a one-value operation with two users is computed in each user's kernel, not in one of its
own; a reduction to one value with two users is not copied."""

import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.script import relax as R

from edgetvm.kernels_schedules.duplicate_scalar_ops import DuplicateScalarOps

HOST = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


def _scale_with_two_users() -> tvm.IRModule:
    """m = max|x| (a reduction to one value), s = m / 127 (one value); r = max(x * s) and (x + s) * r * m: s has
    users in two kernels, one reducing and one elementwise."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            m = bb.emit(R.max(R.abs(x)))
            s = bb.emit(R.divide(m, relax.const(127.0, "float32")))
            r = bb.emit(R.max(R.multiply(x, s)))
            shifted = bb.emit(R.add(x, s))
            out = bb.emit_output(R.multiply(R.multiply(shifted, r), m))
        bb.emit_func_output(out)
    return bb.get()


def _ops(mod: tvm.IRModule) -> list[str]:
    return [
        binding.value.op.name
        for block in mod["main"].body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call) and isinstance(binding.value.op, tvm.ir.Op)
    ]


def _kernels(mod: tvm.IRModule) -> list[str]:
    with HOST:
        fused = tvm.transform.Sequential(cpu_generic.legalize_passes(HOST))(mod)
    return [gv.name_hint for gv, func in fused.functions_items() if isinstance(func, tvm.tirx.PrimFunc)]


def test_a_one_value_op_is_copied_for_each_user_and_fuses_into_it():
    mod = _scale_with_two_users()
    copied = DuplicateScalarOps()(mod)
    assert _ops(mod).count("relax.divide") == 1 and _ops(copied).count("relax.divide") == 2
    assert _ops(copied).count("relax.max") == _ops(mod).count("relax.max")  # reductions to one value are not copied
    assert any(name == "divide" for name in _kernels(mod))  # a kernel of its own before
    assert not any(name == "divide" for name in _kernels(copied))
    x = np.random.default_rng(0).standard_normal((4, 16)).astype("float32")
    results = []
    for module in (mod, copied):
        vm = relax.VirtualMachine(tvm.compile(module, HOST), tvm.cpu())
        results.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_array_equal(results[0], results[1])

"""Run a package on this machine with the Relax VM."""

from __future__ import annotations

import os

import numpy as np

from edgetvm.errors import InputError
from edgetvm.pipeline.package import Package


def flatten_tensors(result) -> list:
    """The VM's result (a tensor or a nested tuple of tensors) as a flat list of tensors."""
    if hasattr(result, "numpy"):
        return [result]
    return [tensor for item in result for tensor in flatten_tensors(item)]


def unpack_outputs(result) -> list[np.ndarray]:
    """The VM's result as a flat list of numpy arrays (``.numpy()``: works for remote tensors too)."""
    return [tensor.numpy() for tensor in flatten_tensors(result)]


def tensor_args(package: Package, inputs: dict[str, np.ndarray], device) -> list:
    """The VM's arguments on ``device`` (local or remote), in the order ``main`` takes them."""
    import tvm

    return [tvm.runtime.tensor(inputs[spec.name], device) for spec in package.inputs]


def invoke_main(vm, package: Package, args) -> dict[str, np.ndarray]:
    """Call ``main`` and fetch its outputs field by field, by the package's output names.

    The stateful calls work the same locally and over RPC, where a returned tuple would arrive as an opaque
    remote object rather than as tensors.
    """
    vm.set_input("main", *args)
    vm.invoke_stateful("main")
    outputs = unpack_outputs(vm.get_outputs("main"))
    return {spec.name: array for spec, array in zip(package.outputs, outputs, strict=True)}


class LocalRunner:
    """A package loaded into the Relax VM on this host's CPU."""

    def __init__(self, package: Package):
        import tvm
        from tvm import relax

        if not package.target().is_host:
            raise InputError(
                f"{package.directory} was built for {package.target_name} ({package.arch}), which cannot run on this "
                "host: deploy it to a board with 'edgetvm deploy', or compile with --target x86"
            )
        # TVM's pool defaults to half the cores on x86 and is created on first use: ask for the target's threads
        # unless the user chose (TVM_NUM_THREADS). A pool that already exists in this thread keeps its size.
        os.environ.setdefault("TVM_NUM_THREADS", str(package.target().threads))
        self.package = package
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(package.library_path)), self.device)
        self._main = self.vm["main"]
        # Inputs go through buffers allocated once: numpy arrays that the VM's input tensors alias (DLPack). Creating
        # a tensor from numpy costs more than running a small model (48 us against 24 us for the trained MNIST CNN),
        # and so does Tensor.copyfrom's Python (15 us for its 3 KB input); a numpy copy into the buffer takes 1 us.
        self._input_names = [spec.name for spec in package.inputs]
        self._output_names = [spec.name for spec in package.outputs]
        self._buffers = [aligned_empty(spec.shape, spec.dtype) for spec in package.inputs]
        self._inputs = [tvm.runtime.from_dlpack(buffer) for buffer in self._buffers]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for checked inputs (see ``pipeline.inputs.check_inputs``)."""
        for buffer, name in zip(self._buffers, self._input_names, strict=True):
            array = inputs[name]
            if array.shape != buffer.shape:  # np.copyto would broadcast
                raise InputError(f"input {name!r} has shape {list(array.shape)}, the model takes {list(buffer.shape)}")
            np.copyto(buffer, array, casting="same_kind")
        outputs = [_owned_array(tensor) for tensor in flatten_tensors(self._main(*self._inputs))]
        return dict(zip(self._output_names, outputs, strict=True))


def aligned_empty(shape: tuple[int, ...], dtype: str, alignment: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``alignment``-byte boundary, as TVM allocates
    its tensors (its kernels may use aligned vector loads)."""
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.empty(size + alignment, dtype=np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset : offset + size].view(dtype).reshape(shape)


def _owned_array(tensor) -> np.ndarray:
    """A local tensor as a numpy array that owns its memory (the VM reuses its storage on the next run); a DLPack
    view plus one copy is cheaper than ``.numpy()``."""
    try:
        return np.from_dlpack(tensor).copy()
    except (TypeError, RuntimeError, BufferError):  # a dtype numpy's DLPack import does not take
        return tensor.numpy()

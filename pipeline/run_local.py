"""Run a package on this machine with the Relax VM."""

from __future__ import annotations

import os

import numpy as np

from edgetvm.errors import InputError
from edgetvm.pipeline.package import Package


def unpack_outputs(result) -> list[np.ndarray]:
    """The VM's result (a tensor or a nested tuple of tensors) as a flat list of numpy arrays."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    flat: list[np.ndarray] = []
    for item in result:
        flat.extend(unpack_outputs(item))
    return flat


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

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for checked inputs (see ``pipeline.inputs.check_inputs``)."""
        return invoke_main(self.vm, self.package, tensor_args(self.package, inputs, self.device))

"""Run a package on this machine with the Relax VM."""

from __future__ import annotations

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


def invoke_main(vm, args) -> list[np.ndarray]:
    """Call ``main`` and fetch its outputs field by field.

    The stateful calls work the same locally and over RPC, where a returned tuple would arrive as an opaque
    remote object rather than as tensors.
    """
    vm.set_input("main", *args)
    vm.invoke_stateful("main")
    return unpack_outputs(vm.get_outputs("main"))


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
        self.package = package
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(package.library_path)), self.device)

    def _args(self, inputs: dict[str, np.ndarray]):
        import tvm

        return [tvm.runtime.tensor(inputs[spec.name], self.device) for spec in self.package.inputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for checked inputs (see ``pipeline.inputs.check_inputs``)."""
        outputs = invoke_main(self.vm, self._args(inputs))
        return {spec.name: array for spec, array in zip(self.package.outputs, outputs, strict=True)}

    def time(self, inputs: dict[str, np.ndarray], repeat: int = 10, number: int = 1) -> list[float]:
        """Per-run latencies in milliseconds (one warm-up run excluded)."""
        evaluator = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat, min_repeat_ms=0)
        return [r * 1e3 for r in evaluator(*self._args(inputs)).results]

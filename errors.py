"""One exception base for edgetvm, one subclass per stage, each with a fixed exit code.

The CLI prints ``str(error)`` as a single line and exits with ``error.exit_code``:

====  ===========================================================
code  meaning
====  ===========================================================
0     success
1     unexpected internal error (a bug: run with -v and report it)
2     bad input: model file, option, input data, calibration data
3     compilation failed for a valid model (TVM could not build it)
4     board error: unreachable, authentication, host key, RPC failure
5     a budget was broken (accuracy drop, latency, regression gate)
130   interrupted (Ctrl-C)
====  ===========================================================
"""

from __future__ import annotations


class EdgeTVMError(Exception):
    """Base of every error edgetvm reports to its user."""

    exit_code = 1


class InputError(EdgeTVMError):
    """The user gave something unusable: a model, an option, a data file."""

    exit_code = 2


class ModelError(InputError):
    """The model file cannot be read, or uses what edgetvm cannot compile."""


class TargetError(InputError):
    """A target name, JSON or file that does not describe a usable target."""


class BuildError(EdgeTVMError):
    """TVM failed to compile a model that was accepted as valid input."""

    exit_code = 3


class BoardError(EdgeTVMError):
    """A board could not be reached, set up or driven."""

    exit_code = 4


class BudgetError(EdgeTVMError):
    """A gate (accuracy, latency, regression budget) was broken."""

    exit_code = 5


EXIT_INTERRUPTED = 130
# The reader of our standard output closed it (``edgetvm compile ... | head -1``): what a shell reports for a
# process that SIGPIPE ended. Whatever the command wrote to files is complete by then.
EXIT_BROKEN_PIPE = 141


def last_line(err: BaseException) -> str:
    """The last non-empty line of an exception's message: where TVM and tools put the actual complaint."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__

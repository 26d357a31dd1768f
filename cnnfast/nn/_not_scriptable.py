"""TorchScript's compiler cannot read cnnfast's modules: their forward picks a backend, checks its
input and runs autograd Functions in Python. torch.jit.script asks every module of a model for a
scriptable version first (__prepare_scriptable__); cnnfast's answer names the module and what
works instead, rather than leave TorchScript to fail on some line deep inside."""
from __future__ import annotations


class NotScriptable:
    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"torch.jit.script: {type(self).__module__}.{type(self).__qualname__} cannot be compiled by "
            f"TorchScript (its forward dispatches to cnnfast's kernels in Python). torch.jit.trace, "
            f"torch.export.export and torch.compile work on cnnfast's modules; or script the torch.nn model "
            f"you would have passed to cnnfast.convert")

"""Measures what a computation keeps for backward: the cleanest measure of activation memory.

Used by the tests (to check what an op saves) and by the benchmarks (to report it); it works on
any device.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

__all__ = ["saved_tensor_bytes"]


def _storage_key(t: torch.Tensor):
    storage = t.untyped_storage()
    return (t.device, storage.data_ptr(), storage.nbytes())


def saved_tensor_bytes(fn: Callable[..., Any], *args: Any, exclude: Iterable[torch.Tensor] = (),
                       **kwargs: Any) -> tuple[Any, int]:
    """Runs ``fn(*args, **kwargs)`` and returns ``(result, bytes)``, where ``bytes`` is the size of
    the distinct storages autograd saved for backward during the call (a tensor saved twice, or
    two views of one storage, count once; tensors that autograd saves anyway, such as a leaf
    input, count too). Storages of the tensors in ``exclude`` do not count: pass a model's
    parameters to measure activation memory alone, which is what recomputation can save."""
    skipped = {_storage_key(t) for t in exclude}
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout == torch.strided and t.device.type != "meta":
            key = _storage_key(t)
            if key not in skipped:
                seen[key] = key[2]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn(*args, **kwargs)
    return result, sum(seen.values())

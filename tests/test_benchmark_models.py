"""The model benchmarks compare like with like: each pair of benchmarks/cases_models.py computes
the same training-step output from the same parameters."""
from __future__ import annotations

import pytest
import torch

from benchmarks import cases_models


@pytest.mark.parametrize("constructor,size", [(entry[1], entry[3]) for entry in cases_models.MODELS])
def test_pair_computes_the_same_output(constructor, size):
    ops = cases_models.model_pair("cpu", torch.float64, constructor)
    assert {id(p) for p in ops.cnnfast.parameters()} == {id(p) for p in ops.parameters}
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    torch.manual_seed(1)  # the same dropout masks
    expected = ops.torch(x)
    torch.manual_seed(1)
    torch.testing.assert_close(ops.cnnfast(x), expected, rtol=1e-9, atol=1e-9 * float(expected.detach().abs().max()))

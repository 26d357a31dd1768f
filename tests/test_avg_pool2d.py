"""cnnfast.ops.avg_pool2d (DenseNet's transitions): F.avg_pool2d's numbers, nothing kept for backward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cnnfast
from cnnfast.ops.avg_pool2d import avg_pool2d


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode,count_include_pad", [
    (2, 2, 0, False, True), (2, 2, 0, True, True), (3, 2, 1, False, False), (3, 1, 1, True, True),
    (2, None, 0, False, True), (3, [], 1, True, False)])  # no stride, and an empty one: kernel_size, as torch
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
def test_matches_torch_forward_and_backward(kernel, stride, padding, ceil_mode, count_include_pad, layout):
    x = torch.randn(2, 5, 7, 9).to(memory_format=layout)
    grad_x = {}
    for name, pool in (("ours", avg_pool2d), ("torch", F.avg_pool2d)):
        xi = x.clone().requires_grad_()
        y = pool(xi, kernel, stride, padding, ceil_mode, count_include_pad)
        y.backward(torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape))
        grad_x[name] = (y, xi.grad)
    torch.testing.assert_close(grad_x["ours"][0], grad_x["torch"][0], rtol=0, atol=0)
    torch.testing.assert_close(grad_x["ours"][1], grad_x["torch"][1], rtol=0, atol=0)
    assert grad_x["ours"][1].stride() == grad_x["torch"][1].stride()


def test_gradcheck_fp64():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: avg_pool2d(t, 2, 2, 0, True, True), (x,))


def test_keeps_nothing_for_backward():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    _, saved = cnnfast.saved_tensor_bytes(lambda t: avg_pool2d(t * 2, 2), x)  # t * 2 keeps nothing either
    assert saved == 0


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="input"):
        avg_pool2d(torch.randn(4, 8, 8), 2)
    with pytest.raises(ValueError, match="kernel_size"):
        avg_pool2d(torch.randn(1, 4, 8, 8), 0)

"""Two CPU processes (gloo), each with half the batch. With synchronised batch statistics
(convert_sync_bn: BNReLUConv2d units, BNAddReLU, and a DenseNet whose BatchNorms become
nn.SyncBatchNorm)
against one process with the whole batch; and the shared-buffer DenseNet under
DistributedDataParallel (which takes no SyncBatchNorm on CPU) against each half run alone."""
from __future__ import annotations

import io
import os
import tempfile
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cnnfast

from helpers import randomise_batch_norms

WORLD = 2
STEPS = 3


def _units():
    torch.manual_seed(0)
    model = torch.nn.Sequential(cnnfast.nn.BNReLUConv2d(4, 5, 3, padding=1, bias=True),
                                cnnfast.nn.BNReLUConv2d(5, 3, 1, momentum=None))
    return randomise_batch_norms(model).double()


def _densenet():
    """Input 4 channels, output 3 (as _units), through a DenseBlock and a Transition."""
    torch.manual_seed(0)
    return torch.nn.Sequential(cnnfast.nn.DenseBlock(2, 4, 2, 2), cnnfast.nn.Transition(8, 3)).double()


class _ResidualTail(torch.nn.Module):
    """relu(bn(x) + identity) then a 1x1 conv: through BNAddReLU, or (its twin) torch.nn ops."""

    def __init__(self, fused: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.bn = cnnfast.nn.BNAddReLU(4, momentum=None) if fused else torch.nn.BatchNorm2d(4, momentum=None)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)
        self.conv = torch.nn.Conv2d(4, 3, 1)

    def forward(self, x):
        identity = x.flip(1)  # a function of x, so the gradient flows through both paths
        if isinstance(self.bn, cnnfast.nn.BNAddReLU):
            return self.conv(self.bn(x, identity))
        return self.conv(torch.relu(self.bn(x) + identity))


def _units_with_hooked_convs():
    """_units whose convs carry a (no-op) forward hook: the units then run their conv as the plain
    module, but their batch statistics must still be shared."""
    model = _units()
    for unit in model:
        unit.conv.register_forward_hook(lambda module, args, output: None)
    return model


MODELS = {"units": _units, "units-hooked-conv": _units_with_hooked_convs, "densenet": _densenet,
          "densenet-ddp": _densenet, "bn-add-relu": lambda: _ResidualTail().double()}
KEEP_SIZE = ("units", "units-hooked-conv", "bn-add-relu")  # the models whose output keeps H and W


def _torch_nn_twin(name):
    """MODELS[name] in torch.nn ops, with the same parameters and buffers in the same order: the
    independent whole-batch reference."""
    if name == "bn-add-relu":
        return _ResidualTail(fused=False).double()
    model = MODELS[name]()
    if name in ("units", "units-hooked-conv"):
        return torch.nn.Sequential(*[torch.nn.Sequential(unit.bn, torch.nn.ReLU(), unit.conv) for unit in model])
    for module in model.modules():  # DenseBlock, its layers and the Transition: the plain DenseNet
        if hasattr(module, "memory_efficient"):
            module.memory_efficient = False
    return model


def _batches(name):
    generator = torch.Generator().manual_seed(1)
    if name in KEEP_SIZE:
        # Even halves keep the slicing simple; the last step gives each rank a single 1x1 sample,
        # one value per channel per rank, which is fine once the statistics are shared.
        shapes = [(6, 5, 4)] * (STEPS - 1) + [(2, 1, 1)]
    else:  # the transition halves H and W
        shapes = [(6, 4, 6)] * STEPS
    out = (lambda h, w: (h, w)) if name in KEEP_SIZE else (lambda h, w: (h // 2, w // 2))
    return [(torch.randn(n, 4, h, w, generator=generator, dtype=torch.float64) + 0.5,
             torch.randn(n, 3, *out(h, w), generator=generator, dtype=torch.float64)) for n, h, w in shapes]


def _run(model, batches, rank=None):
    """Per step: output, input gradient, parameter gradients; then the final buffers."""
    results = []
    for x, grad in batches:
        if rank is not None:
            x, grad = x.chunk(WORLD)[rank], grad.chunk(WORLD)[rank]
        x = x.clone().requires_grad_()
        y = model(x)
        y.backward(grad)
        results.append((y.detach(), x.grad, [p.grad.clone() for p in model.parameters()]))
        model.zero_grad()
    return results, [b.clone() for b in model.buffers()]


def _error_message(run, error_type) -> str:
    try:
        run()
    except error_type as error:
        return str(error)
    return "no error"


def _one_value_in_all(rank):  # rank 0 one 1x1 sample, rank 1 none
    model = cnnfast.nn.convert_sync_bn(cnnfast.nn.BNReLUConv2d(4, 5, 1).double())
    return _error_message(lambda: model(torch.randn(1 - rank, 4, 1, 1, dtype=torch.float64)), ValueError)


def _hooked_bn(rank):  # a hook expects bn itself to run, which cannot share the statistics
    model = cnnfast.nn.convert_sync_bn(cnnfast.nn.BNReLUConv2d(4, 5, 1).double())
    model.bn.register_forward_hook(lambda module, args, output: None)
    return _error_message(lambda: model(torch.randn(2, 4, 3, 3, dtype=torch.float64)), NotImplementedError)


ERROR_CASES = {"one-value-in-all": _one_value_in_all, "hooked-bn": _hooked_bn}


def _worker(rank, store, queue, name):
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
        if name in ERROR_CASES:
            result = ERROR_CASES[name](rank)
        else:
            model = MODELS[name]()
            if name == "densenet-ddp":  # DDP averages the gradients: x WORLD gives their sum
                model = torch.nn.parallel.DistributedDataParallel(model)
                for p in model.parameters():
                    p.register_hook(lambda grad: grad * WORLD)
            else:
                model = cnnfast.nn.convert_sync_bn(model)
            result = _run(model, _batches(name), rank)
        # As bytes: a tensor sent through the queue lives in this process's shared memory,
        # gone once it exits.
        buffer = io.BytesIO()
        torch.save(result, buffer)
        queue.put((rank, buffer.getvalue()))
        dist.barrier()  # both ranks past their last collective
    except BaseException:  # reported to the test at once, not after its timeout
        queue.put((rank, traceback.format_exc()))
    # Then leave at once, the result flushed to the test: torch's process-group teardown at exit
    # has aborted a rank (SIGABRT) after it sent its results, in about one full-suite run in five
    # (gloo, two CPU processes), which says nothing about what the test checks.
    queue.close()
    queue.join_thread()
    os._exit(0)


def _spawn(name):
    """Each rank's _run results for model `name`."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    # The ranks meet through a file of their own: a TCP port chosen free can be taken by another
    # process before rank 0 binds it.
    with tempfile.TemporaryDirectory(prefix="cnnfast-dist-") as directory:
        store = os.path.join(directory, "store")
        processes = [context.Process(target=_worker, args=(rank, store, queue, name)) for rank in range(WORLD)]
        for p in processes:
            p.start()
        results = dict(queue.get(timeout=240) for _ in range(WORLD))
        failures = [f"rank {rank}:\n{r}" for rank, r in results.items() if isinstance(r, str)]
        assert not failures, "\n".join(failures)
        results = {rank: torch.load(io.BytesIO(r)) for rank, r in results.items()}
        for p in processes:
            p.join(timeout=60)
            assert p.exitcode == 0
    return results


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


needs_distributed = pytest.mark.skipif(not dist.is_available() or not cnnfast.extension_loaded(),
                                       reason="needs torch.distributed and _C")


@needs_distributed
@pytest.mark.parametrize("name", ["units", "units-hooked-conv", "densenet", "bn-add-relu"])
def test_two_synchronised_ranks_match_one_process_on_the_whole_batch(name):
    results = _spawn(name)
    expected, expected_buffers = _run(_torch_nn_twin(name), _batches(name))
    for step, (y, dx, grads) in enumerate(expected):
        ranks = [results[rank][0][step] for rank in range(WORLD)]
        _close(torch.cat([r[0] for r in ranks]), y)
        _close(torch.cat([r[1] for r in ranks]), dx)
        # Parameter gradients stay per rank (DDP would average them): their sum is the whole batch's.
        for i, grad in enumerate(grads):
            _close(sum(r[2][i] for r in ranks), grad)
    for rank in range(WORLD):
        for buffer, want in zip(results[rank][1], expected_buffers):
            _close(buffer, want)


@needs_distributed
def test_shared_buffer_densenet_under_distributed_data_parallel():
    results = _spawn("densenet-ddp")
    # Without synchronised statistics each rank computes its half alone (here: the plain torch.nn
    # DenseNet on that half); DDP sums the gradients
    # (the test scales its average by WORLD) and gives every rank rank 0's buffers each step.
    alone = [_run(_torch_nn_twin("densenet-ddp"), _batches("densenet-ddp"), rank) for rank in range(WORLD)]
    for step in range(STEPS):
        for rank in range(WORLD):
            y, dx, grads = results[rank][0][step]
            _close(y, alone[rank][0][step][0])
            _close(dx, alone[rank][0][step][1])
            for i, grad in enumerate(grads):
                _close(grad, sum(alone[r][0][step][2][i] for r in range(WORLD)))
    for buffer, want in zip(results[0][1], alone[0][1]):
        _close(buffer, want)


@needs_distributed
def test_one_value_per_channel_over_all_ranks_is_the_error_on_every_rank():
    """nn.BatchNorm2d's error, raised by both ranks together (neither left waiting in a collective),
    though one of them has no values at all."""
    results = _spawn("one-value-in-all")
    for rank in range(WORLD):
        assert "Expected more than 1 value per channel when training" in results[rank], results[rank]
        assert "over all ranks of the process group" in results[rank]


@needs_distributed
def test_a_hooked_bn_marked_to_share_statistics_is_an_error_not_this_ranks_batch_alone():
    results = _spawn("hooked-bn")
    for rank in range(WORLD):
        assert "cannot share batch statistics across ranks" in results[rank], results[rank]
        assert "BatchNorm2d with hooks" in results[rank]


def test_convert_sync_bn_marks_cnnfast_units_and_converts_plain_batch_norm():
    model = torch.nn.Sequential(cnnfast.nn.BNReLUConv2d(4, 5, 3), torch.nn.BatchNorm2d(5))
    group = object()  # any process group; nothing runs here
    converted = cnnfast.nn.convert_sync_bn(model, group)
    assert converted is model and model[0].process_group is group
    assert isinstance(model[0].bn, torch.nn.BatchNorm2d)  # the unit synchronises its own statistics
    assert isinstance(model[1], torch.nn.SyncBatchNorm)
    # BNAddReLU synchronises its own statistics: it stays one (torch's converter would drop its
    # add and ReLU), and, outside a process group, runs as before.
    tail = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), cnnfast.nn.BNAddReLU(4))
    x = torch.randn(2, 3, 5, 5)
    before = tail(x)
    assert cnnfast.nn.convert_sync_bn(tail, group) is tail and tail[1].process_group is group
    assert type(tail[1]) is cnnfast.nn.BNAddReLU
    cnnfast.nn.convert_sync_bn(tail)  # the default group: the whole world, none here
    torch.testing.assert_close(tail(x), before)

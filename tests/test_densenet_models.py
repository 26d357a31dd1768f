"""cnnfast.models' DenseNets: torchvision's keys and shapes (committed fixtures), the paper's
parameter counts, memory-efficient against plain in a training step, and loading local weights."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cnnfast
from cnnfast import models

from helpers import assert_state_dict_layout, assert_training_steps_match, randomise_batch_norms

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "torchvision_densenet_state_dicts.json").read_text())


@pytest.mark.parametrize("name", ["densenet121", "densenet161", "densenet169", "densenet201"])
def test_state_dict_keys_and_shapes_are_torchvisions(name):
    assert_state_dict_layout(getattr(models, name)(), FIXTURES[name])


@pytest.mark.parametrize("constructor,millions", [
    (models.densenet_bc_100_k12, 0.8), (models.densenet_bc_250_k24, 15.3), (models.densenet_bc_190_k40, 25.6)])
def test_densenet_bc_parameter_counts_are_the_papers(constructor, millions):
    count = sum(p.numel() for p in constructor().parameters())
    assert round(count / 1e6, 1) == millions, count


def test_densenet121_parameter_count():
    assert sum(p.numel() for p in models.densenet121().parameters()) == 7_978_856  # torchvision's


def tiny(memory_efficient, **kwargs):
    torch.manual_seed(0)
    model = models.DenseNet(growth_rate=4, block_config=(2, 3), num_init_features=8, bn_size=2, num_classes=5,
                            memory_efficient=memory_efficient, **kwargs).double()
    return randomise_batch_norms(model)


@pytest.mark.parametrize("small_inputs", [False, True], ids=["imagenet-stem", "cifar-stem"])
@pytest.mark.parametrize("drop_rate", [0.0, 0.2], ids=["no-dropout", "dropout"])
def test_memory_efficient_model_matches_plain(small_inputs, drop_rate):
    ours = tiny(True, small_inputs=small_inputs, drop_rate=drop_rate)
    plain = tiny(False, small_inputs=small_inputs, drop_rate=drop_rate)
    plain.load_state_dict(ours.state_dict())
    generator = torch.Generator().manual_seed(0)
    modes = ("train", "train", "eval")
    inputs = [torch.randn(2, 3, 32, 32, generator=generator, dtype=torch.float64) for _ in modes]
    assert_training_steps_match(ours, plain, inputs, modes)


def test_memory_efficient_model_saves_less():
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    saved = {}
    for memory_efficient in (True, False):
        model = models.densenet_bc(40, 12, memory_efficient=memory_efficient).double()
        _, saved[memory_efficient] = cnnfast.saved_tensor_bytes(model, x, exclude=list(model.parameters()))
    assert saved[True] < 0.5 * saved[False], saved


def _old_style(state):
    """torchvision's pre-0.3 DenseNet keys: 'denselayer1.norm.1.weight' for 'denselayer1.norm1.weight'."""
    return {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2.") if "denselayer" in k else k: v
            for k, v in state.items()}


def test_weights_load_from_a_local_checkpoint_with_old_keys(tmp_path):
    source = models.densenet_bc(10, 4).eval()
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": _old_style(source.state_dict())}, path)
    loaded = models.densenet_bc(10, 4, weights=path).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_weights_saved_from_distributed_data_parallel_load(tmp_path):
    source = models.densenet_bc(10, 4).eval()
    path = tmp_path / "ddp.pth"
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, path)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(models.densenet_bc(10, 4, weights=path).eval()(x), source(x), rtol=0, atol=0)


def test_other_num_classes_replaces_only_the_classifier(tmp_path):
    source = models.densenet_bc(10, 4)
    path = tmp_path / "checkpoint.pth"
    torch.save(source.state_dict(), path)
    with pytest.warns(UserWarning, match="classifier.weight \\[10, .*classifier.weight \\[3, "):
        loaded = models.densenet_bc(10, 4, num_classes=3, weights=path)
    assert loaded.classifier.out_features == 3
    for name, tensor in source.state_dict().items():
        if not name.startswith("classifier."):
            torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        models.densenet_bc(10, 4, weights=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        models.densenet_bc(101, 12)


def test_same_outputs_as_torchvision_where_installed():
    torchvision = pytest.importorskip("torchvision", reason="torchvision not installed; the key fixtures stand in")
    theirs = torchvision.models.densenet121().eval()
    ours = models.densenet121()
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_benchmark_models_compute_the_same_step():
    """The benchmark's three DenseNets (plain, torchvision's checkpointing, cnnfast) share parameters
    and give the same outputs and gradients: its rows compare like with like."""
    from benchmarks.cases_densenet import three_models
    built = three_models(lambda **kw: models.densenet_bc(16, 4, **kw), "cpu", torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    parameters = list(built["plain"].parameters())
    results = {name: torch.autograd.grad(model(x).square().sum(), parameters) for name, model in built.items()}
    for name in ("checkpoint", "cnnfast"):
        assert all(p is q for p, q in zip(parameters, built[name].parameters()))
        for grad, grad_plain in zip(results[name], results["plain"]):
            torch.testing.assert_close(grad, grad_plain, rtol=1e-9, atol=1e-10)

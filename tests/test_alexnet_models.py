"""cnnfast.models' AlexNets: torchvision's keys and shapes (a committed fixture), the parameter
counts, the paper's initialisation, the same outputs and gradients as torch.nn networks given the
same state_dict, local weights, and less kept for backward."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cnnfast
from cnnfast import models, reference_models

from helpers import assert_state_dict_layout, assert_training_steps_match

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "torchvision_alexnet_state_dict.json").read_text())


# The plain torch.nn twins, from cnnfast/reference_models.py.
torch_nn_alexnet = reference_models.AlexNet
torch_nn_alexnet_paper = reference_models.AlexNetPaper


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


def test_state_dict_keys_and_shapes_are_torchvisions():
    assert_state_dict_layout(models.alexnet(), FIXTURE["alexnet"])


def test_alexnet_initialisation_is_torchvisions():
    # torchvision keeps torch's default initialisation: the same modules built in the same order draw
    # the same numbers.
    torch.manual_seed(0)
    ours = models.alexnet(num_classes=10).state_dict()
    torch.manual_seed(0)
    theirs = torch_nn_alexnet(num_classes=10).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_parameter_counts():
    assert parameter_count(models.alexnet()) == 61_100_840 == FIXTURE["alexnet"]["num_params"]
    assert parameter_count(models.alexnet_paper()) == 60_965_224  # the paper's two-GPU network
    # One tower: conv2, conv4 and conv5 see all of their input maps.
    assert parameter_count(models.alexnet_paper(groups=1)) == 60_965_224 + 256 * 48 * 25 + 384 * 192 * 9 + 256 * 192 * 9
    assert models.alexnet_paper(num_classes=10).classifier.fc8.out_features == 10


def test_paper_feature_sizes_for_227_inputs():
    model = models.alexnet_paper(num_classes=10).eval()
    sizes = {}
    for name in ("conv1", "norm_pool1", "norm_pool2", "pool5"):
        getattr(model.features, name).register_forward_hook(
            lambda module, args, output, name=name: sizes.__setitem__(name, tuple(output.shape[1:])))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 227, 227)).shape == (1, 10)
    assert sizes == {"conv1": (96, 55, 55), "norm_pool1": (96, 27, 27), "norm_pool2": (256, 13, 13),
                     "pool5": (256, 6, 6)}
    with pytest.raises(ValueError, match="227x227"):
        model(torch.randn(1, 3, 224, 224))
    with pytest.raises(ValueError, match="groups"):
        models.alexnet_paper(groups=3)


def test_paper_initialisation():
    torch.manual_seed(0)
    model = models.alexnet_paper()
    layers = {**dict(model.features.named_children()), **dict(model.classifier.named_children())}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        weight, bias = layers[name].weight, layers[name].bias
        # N(0, 0.01): mean and std within a few standard errors of the estimates.
        n = weight.numel()
        assert abs(weight.mean().item()) < 5 * 0.01 / n ** 0.5, name
        assert abs(weight.std().item() - 0.01) < 5 * 0.01 / (2 * n) ** 0.5, name
        expected = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.equal(bias, torch.full_like(bias, expected)), name


def compare_step(ours, theirs, x, modes=("train", "eval")):
    """Train mode (dropout on, the same masks) and eval mode, from the same state_dict."""
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert_training_steps_match(ours, theirs, [x] * len(modes), modes, atol=1e-12)


def test_alexnet_matches_torch_nn():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 67, 67, dtype=torch.float64)  # torchvision's smallest input is 63x63
    compare_step(models.alexnet(num_classes=7).double(), torch_nn_alexnet(num_classes=7).double(), x)


def test_alexnet_paper_matches_torch_nn():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 227, 227, dtype=torch.float64)
    # Input scaled so that the LRN's sums matter (the paper's weights give small conv1 outputs).
    compare_step(models.alexnet_paper(num_classes=7).double(), torch_nn_alexnet_paper(num_classes=7).double(), 30 * x)


def test_saves_less_for_backward_than_torch_nn():
    for ours, theirs, size in ((models.alexnet(num_classes=10), torch_nn_alexnet(num_classes=10), 67),
                               (models.alexnet_paper(num_classes=10), torch_nn_alexnet_paper(num_classes=10), 227)):
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(1, 3, size, size)
        saved = [cnnfast.saved_tensor_bytes(model, x, exclude=list(model.parameters()))[1] for model in (ours, theirs)]
        assert saved[0] < saved[1], saved
    # torchvision's AlexNet (the last `theirs` above is the paper's): both keep each pool's input
    # (the ReLU's output, which the ReLU keeps anyway); per pool output torch keeps an int64 index
    # and cnnfast a uint8 offset, 7 bytes less. (The paper's LRN stages: their own test.)
    ours, theirs = models.alexnet(num_classes=10), torch_nn_alexnet(num_classes=10)
    x = torch.randn(1, 3, 67, 67)
    saved = [cnnfast.saved_tensor_bytes(model, x, exclude=list(model.parameters()))[1] for model in (ours, theirs)]
    pooled, t = 0, x
    for module in theirs.features:
        t = module(t)
        pooled += t.numel() if isinstance(module, torch.nn.MaxPool2d) else 0
    assert saved[1] - saved[0] == 7 * pooled, (saved, pooled)


@pytest.mark.parametrize("constructor,head", [(models.alexnet, "classifier.6"),
                                              (models.alexnet_paper, "classifier.fc8")])
def test_weights_load_strictly_and_other_num_classes_replaces_the_head(tmp_path, constructor, head):
    source = constructor(num_classes=5).eval()
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    size = 227 if constructor is models.alexnet_paper else 67
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(constructor(num_classes=5, weights=path).eval()(x), source(x), rtol=0, atol=0)
    with pytest.warns(UserWarning, match=f"{head}.*fresh initialisation.*num_classes"):
        other = constructor(num_classes=3, weights=path)
    assert other.state_dict()[head + ".weight"].shape[0] == 3
    for name, tensor in source.state_dict().items():
        if not name.startswith(head + "."):
            assert torch.equal(other.state_dict()[name], tensor), name
    state = source.state_dict()
    state["features.extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="features.extra"):
        constructor(num_classes=5, weights=path)
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        constructor(weights=tmp_path / "absent.pth")

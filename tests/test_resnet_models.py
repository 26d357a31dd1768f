"""cnnfast.models' ResNets against torchvision's layout (committed key fixtures) and against the
plain torch.nn ResNet of cnnfast/reference_models.py given the same state_dict: outputs, every
gradient and the running statistics of a training step, eval outputs, and fewer saved bytes."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import cnnfast
from cnnfast import models, reference_models
from cnnfast.models.resnet import BasicBlock, Bottleneck, ResNet

from helpers import (assert_low_precision_close, assert_state_dict_layout, assert_step_matches,
                     randomise_batch_norms, saved_bytes)

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "torchvision_resnet_state_dicts.json").read_text())
NAMES = [name for name in FIXTURES if name != "source"]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_shapes_and_parameter_count_are_torchvisions(name):
    with torch.device("meta"):
        model = getattr(models, name)()
    assert_state_dict_layout(model, FIXTURES[name])


def tiny_pair(block, groups=1, width_per_group=64, num_classes=7):
    """A small cnnfast ResNet and the torch.nn one with the same state_dict, in fp64."""
    ours = ResNet(block, [1, 2, 1, 1], num_classes=num_classes, groups=groups, width_per_group=width_per_group)
    theirs = reference_models.ResNet(getattr(reference_models, block.__name__), [1, 2, 1, 1], num_classes, groups,
                                     width_per_group)
    randomise_batch_norms(ours)
    theirs.load_state_dict(ours.state_dict())
    return ours.double(), theirs.double()


@pytest.mark.parametrize("block,groups,width", [(BasicBlock, 1, 64), (Bottleneck, 1, 64), (Bottleneck, 4, 8)],
                         ids=["basic", "bottleneck", "resnext"])
def test_training_step_and_eval_match_torch_nn(block, groups, width):
    torch.manual_seed(0)
    ours, theirs = tiny_pair(block, groups, width)
    assert_step_matches(ours.train(), theirs.train(), torch.randn(2, 3, 33, 30, dtype=torch.float64))
    ours.eval(), theirs.eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)


def test_channels_last_fp32_error_within_twice_torch_nns():
    # 64x64 and batch 4: the last stage's BatchNorms see 16 values per channel. At 32x32 and batch
    # 2 they see 2, and fp32 rounding is amplified a thousandfold (torch's own error is 1e-3 there).
    torch.manual_seed(0)
    ours, theirs = tiny_pair(Bottleneck)
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    exact = theirs(x)  # fp64, training mode: batch statistics
    ours, theirs = (m.float().to(memory_format=torch.channels_last) for m in (ours, theirs))
    x = x.float().to(memory_format=torch.channels_last)
    assert_low_precision_close(ours(x), theirs(x), exact)


def bytes_eager_keeps_and_fused_ops_do_not(reference: torch.nn.Module, x: torch.Tensor) -> int:
    """What torch.nn's ResNet keeps for backward beyond cnnfast's, from the reference's own shapes:
    - every ReLU output inside a block (after bn1, and bn2 in a Bottleneck): BN-ReLU-conv recomputes it;
    - the stem's ReLU output and the pool's int64 indices, where cnnfast keeps a uint8 argmax;
    - the last block's output: eager's ReLU keeps it, BN-add-ReLU keeps only its inputs (every other
      block's output is the next block's input, kept by its conv1 in both models).
    Per-channel statistics are the same size in both."""
    outputs = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.clone()))
             for name, module in reference.named_modules()]
    with torch.no_grad():
        reference.train()(x)
    for hook in hooks:
        hook.remove()
    blocks = [name for name, m in reference.named_modules() if isinstance(m, (reference_models.BasicBlock,
                                                                             reference_models.Bottleneck))]
    inner = [outputs[f"{block}.{bn}"] for block in blocks for bn in ("bn1", "bn2")
             if isinstance(reference.get_submodule(block), reference_models.Bottleneck) or bn == "bn1"]
    pooled = outputs["maxpool"].numel()
    fp = x.element_size()
    relu_outputs = sum(t.numel() for t in inner) + outputs["bn1"].numel() + outputs[blocks[-1]].numel()
    return relu_outputs * fp + pooled * (8 - 1)  # int64 indices instead of a uint8 argmax


@pytest.mark.parametrize("depth", [18, 50])
def test_saved_bytes_are_torch_nns_less_exactly_what_the_fused_ops_recompute(depth):
    torch.manual_seed(0)
    ours = getattr(models, f"resnet{depth}")(num_classes=10)
    theirs = reference_models.resnet(depth, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    assert saved_bytes(theirs, x) - saved_bytes(ours, x) == bytes_eager_keeps_and_fused_ops_do_not(theirs, x)


def test_zero_init_residual_zeroes_the_last_bn_of_each_block():
    model = models.resnet18(zero_init_residual=True)
    assert all(torch.count_nonzero(block.bn2.weight) == 0 for layer in (model.layer1, model.layer4) for block in layer)
    model = models.resnet50(zero_init_residual=True)
    assert torch.count_nonzero(model.layer2[0].bn3.weight) == 0 and torch.count_nonzero(model.layer2[0].bn2.weight) > 0


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_replace_stride_with_dilation_is_torchvisions(training):
    model = models.resnet50(replace_stride_with_dilation=[False, True, True], num_classes=3).double().train(training)
    randomise_batch_norms(model)
    # torchvision's rule: a layer whose stride is replaced keeps the dilation it had in its first
    # block and multiplies it by the stride for the rest, and for the layers after it.
    for name, dilations in (("layer3", [1, 2, 2, 2, 2, 2]), ("layer4", [2, 4, 4])):
        layer = getattr(model, name)
        assert [(b.conv2.dilation, b.conv2.padding) for b in layer] == [((d, d), (d, d)) for d in dilations]
        assert layer[0].conv2.stride == (1, 1) and layer[0].downsample[0].stride == (1, 1)
    blocks = [*model.layer3, *model.layer4]
    plain = copy.deepcopy(blocks)
    x = torch.randn(2, 512, 9, 9, dtype=torch.float64)
    features, expected = x, x
    for block, twin in zip(blocks, plain):
        features = block(features)
        expected = reference_models.Bottleneck.forward(twin, expected)  # torch.nn's ops, the same convs
    assert features.shape[-2:] == (9, 9)
    torch.testing.assert_close(features, expected, rtol=1e-10, atol=1e-12)
    for block, twin in zip(blocks, plain):
        torch.testing.assert_close(block.bn2.running_mean, twin.bn2.running_mean, rtol=1e-10, atol=1e-12)


def test_torchvision_block_arguments_are_checked_as_torchvision():
    with pytest.raises(ValueError, match="groups=1 and base_width=64"):
        BasicBlock(8, 8, groups=2)
    with pytest.raises(ValueError, match="replace_stride_with_dilation"):
        models.resnet50(replace_stride_with_dilation=[True])


def test_a_subclass_overriding_forward_impl_runs_its_own():
    # torchvision's idiom for a feature extractor: ResNet.forward only calls _forward_impl.
    class Features(ResNet):
        def _forward_impl(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    torch.manual_seed(0)
    model = randomise_batch_norms(Features(BasicBlock, [1, 1, 1, 1], num_classes=4).double()).eval()
    whole = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=4).double().eval()
    whole.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    features = model(x)
    assert features.shape == (2, 512, 2, 2)
    torch.testing.assert_close(whole.fc(torch.flatten(whole.avgpool(features), 1)), whole(x))
    # Its forward is its own: convert leaves it as it is, and folding leaves its stem unfolded.
    converted, report = cnnfast.convert(model)
    assert type(converted) is Features and report.swapped == []
    fused = cnnfast.fuse_for_inference(model)
    assert isinstance(fused.bn1, torch.nn.BatchNorm2d) and isinstance(fused.layer1[0].bn1, torch.nn.Identity)
    torch.testing.assert_close(fused(x), features)


def test_local_weights_load_strictly_and_a_new_num_classes_replaces_fc(tmp_path):
    reference = reference_models.resnet(18)
    path = tmp_path / "resnet18.pth"
    torch.save({"module." + k: v for k, v in reference.state_dict().items()}, path)  # a DDP checkpoint
    model = models.get_model("resnet18", weights=path)
    key = "layer3.1.conv2.weight"
    torch.testing.assert_close(model.state_dict()[key], reference.state_dict()[key])
    with pytest.warns(UserWarning, match="fc.*fresh initialisation"):
        model = models.get_model("resnet18", weights=path, num_classes=5)
    assert model.fc.out_features == 5
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight)


def test_a_norm_layer_other_than_batch_norm_runs_the_plain_modules():
    # torchvision's detection backbones pass norm_layer=FrozenBatchNorm2d, which is no BatchNorm2d.
    class Frozen(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.rand(n) + 0.5)

        def forward(self, x):
            return x * self.scale.view(1, -1, 1, 1)

    torch.manual_seed(0)
    ours = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=4, norm_layer=Frozen).double()
    theirs = reference_models.resnet(50, num_classes=4)
    theirs.layer1, theirs.layer2, theirs.layer3, theirs.layer4 = (  # the same depth as ours
        layer[:1] for layer in (theirs.layer1, theirs.layer2, theirs.layer3, theirs.layer4))
    for name, module in ours.named_modules():
        if isinstance(module, Frozen):
            parent, _, child = name.rpartition(".")
            setattr(theirs.get_submodule(parent) if parent else theirs, child, copy.deepcopy(module))
    theirs.load_state_dict(ours.state_dict())
    theirs.double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert_step_matches(ours, theirs, x)


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck], ids=["basic", "bottleneck"])
def test_hooked_or_replaced_relus_run_as_in_torchvision(block):
    # Guided backprop and Grad-CAM hook every nn.ReLU; other recipes swap the activation.
    torch.manual_seed(0)
    ours, theirs = tiny_pair(block)
    calls = {"ours": [], "theirs": []}
    for key, model in (("ours", ours), ("theirs", theirs)):
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.ReLU):
                # Guided backprop: only positive gradients flow back through each ReLU (a full
                # backward hook needs inplace=False, in torchvision's model as in any).
                module.inplace = False
                module.register_full_backward_hook(lambda m, grad_in, grad_out: (grad_in[0].clamp(min=0),))
                module.register_forward_hook(lambda m, i, o, name=name, key=key: calls[key].append(name))
    assert_step_matches(ours.train(), theirs.train(), torch.randn(2, 3, 33, 30, dtype=torch.float64))
    assert calls["ours"] == calls["theirs"] and len(calls["ours"]) == 1 + 5 * (2 if block is BasicBlock else 3)  # the stem, then per block

    ours, theirs = tiny_pair(block)
    for model in (ours, theirs):
        for name, module in list(model.named_modules()):
            if isinstance(module, torch.nn.ReLU):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, torch.nn.SiLU())
    assert_step_matches(ours.train(), theirs.train(), torch.randn(2, 3, 33, 30, dtype=torch.float64))

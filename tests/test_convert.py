"""cnnfast.convert and cnnfast.fuse_for_inference on torchvision-style models (the plain torch.nn
architectures of cnnfast/reference_models.py): the same outputs, gradients and running statistics,
the same state_dict keys, fewer bytes saved for backward."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import cnnfast
from cnnfast import models, reference_models

from helpers import assert_step_matches, randomise_batch_norms, saved_bytes


def tiny_resnet(block="Bottleneck"):
    torch.manual_seed(0)
    model = reference_models.ResNet(getattr(reference_models, block), [1, 2, 1, 1], num_classes=5)
    randomise_batch_norms(model)
    return model.double()


def tiny_densenet():
    torch.manual_seed(0)
    model = reference_models.DenseNet(growth_rate=4, block_config=(2, 3), num_init_features=8, bn_size=2,
                                      num_classes=5)
    randomise_batch_norms(model)
    return model.double()


def swapped_types(report):
    return sorted({old for _, old, _ in report.swapped})


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
def test_converted_torchvision_resnet_matches_the_original(block):
    original = tiny_resnet(block)
    converted, report = cnnfast.convert(original)
    assert swapped_types(report) == [block, "MaxPool2d", "ResNet"]
    assert isinstance(converted, models.ResNet) and type(original) is reference_models.ResNet  # a copy
    assert list(converted.state_dict()) == list(original.state_dict())
    assert_step_matches(converted, original, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_converted_torchvision_densenet_matches_the_original():
    original = tiny_densenet()
    converted, report = cnnfast.convert(original)
    assert swapped_types(report) == ["MaxPool2d", "Sequential", "_DenseBlock", "_Transition"]
    assert isinstance(converted.features.denseblock1, cnnfast.nn.DenseBlock)
    assert list(converted.state_dict()) == list(original.state_dict())
    assert_step_matches(converted, original, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_converted_alexnet_paper_runs_its_stages_as_one_op_each():
    torch.manual_seed(0)
    original = reference_models.AlexNetPaper(num_classes=5, dropout=0.0).double()
    converted, report = cnnfast.convert(original)
    assert [name for name, old, _ in report.swapped if old == "Sequential"] == ["features.norm_pool1",
                                                                                 "features.norm_pool2"]
    assert_step_matches(converted, original, 30 * torch.randn(1, 3, 227, 227, dtype=torch.float64))


@pytest.mark.parametrize("build,native", [
    (lambda: reference_models.resnet(50, num_classes=10), lambda: models.resnet50(num_classes=10)),
    (lambda: reference_models.DenseNet(block_config=(2, 2, 2, 2), num_classes=10),
     lambda: models.DenseNet(block_config=(2, 2, 2, 2), num_classes=10))], ids=["resnet50", "densenet"])
def test_conversion_saves_what_cnnfasts_own_model_saves(build, native):
    # cnnfast's own model's bytes are pinned against torch.nn's by test_resnet_models and
    # test_dense_block: a converted model keeps neither more nor less.
    torch.manual_seed(0)
    original = build()
    converted, _ = cnnfast.convert(original)
    x = torch.randn(2, 3, 64, 64)
    assert saved_bytes(converted, x) == saved_bytes(native(), x) < saved_bytes(original, x)


def sequential():
    # No convolution with a bias feeds a BatchNorm in training, whose output does not depend on it.
    return nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(inplace=True), nn.Conv2d(3, 6, 3, padding=1, bias=False),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(3, 2),
                         nn.ReLU(), nn.LocalResponseNorm(3, alpha=1e-2, k=2.0), nn.MaxPool2d(3, 2, ceil_mode=True),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1),
                         # The first keeps nothing for backward; a divisor_override runs as torch's.
                         nn.AvgPool2d(2, padding=1, ceil_mode=True, count_include_pad=False),
                         nn.AvgPool2d(2, stride=1, divisor_override=3), nn.Flatten())


def test_sequential_runs_become_one_op_each_with_the_same_numbers():
    torch.manual_seed(0)
    original = sequential().double()
    randomise_batch_norms(original)
    converted, report = cnnfast.convert(original)
    assert type(converted) is cnnfast.nn.FusedSequential and cnnfast.nn.sequential.fusable_runs(converted) == 5
    assert sorted(old for _, old, _ in report.swapped).count("MaxPool2d") == 2
    assert list(converted.state_dict()) == list(original.state_dict())
    assert_step_matches(converted, original, torch.randn(2, 3, 17, 17, dtype=torch.float64))
    converted.eval(), original.eval()
    x = torch.randn(2, 3, 17, 17, dtype=torch.float64)
    torch.testing.assert_close(converted(x), original(x), rtol=1e-10, atol=1e-10)


def test_unbatched_input_runs_the_modules_where_the_fused_op_takes_batches_only():
    # torch.nn takes a [C, H, W] input through Conv2d, ReLU, LocalResponseNorm, MaxPool2d and AvgPool2d.
    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.LocalResponseNorm(3, alpha=1e-2), nn.MaxPool2d(3, 2),
                             nn.AvgPool2d(2)).double()
    converted, _ = cnnfast.convert(original)
    assert cnnfast.nn.sequential.fusable_runs(converted) == 2
    x = torch.randn(3, 13, 13, dtype=torch.float64)
    torch.testing.assert_close(converted(x), original(x), rtol=1e-12, atol=1e-12)


def test_integer_input_pools_as_torch():
    # torch pools integer tensors (max and average alike); a converted pool does too.
    original = nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(2))
    converted, _ = cnnfast.convert(original)
    assert cnnfast.nn.sequential.fusable_runs(converted) == 1
    x = torch.randint(-50, 50, (2, 3, 8, 8))
    assert torch.equal(converted(x), original(x))


def test_inplace_conversion_keeps_the_parameter_tensors():
    original = tiny_resnet()
    parameters = {name: p for name, p in original.named_parameters()}
    converted, _ = cnnfast.convert(original, inplace=True)
    assert all(p is parameters[name] for name, p in converted.named_parameters())


def test_look_alikes_and_sequentials_with_their_own_forward_are_left_alone():
    class BasicBlock(nn.Module):  # a timm-style block: other children than torchvision's
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()
            self.conv2, self.bn2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + x

    class Reversed(nn.Sequential):
        def forward(self, x):
            for module in reversed(self):
                x = module(x)
            return x

    model = nn.Sequential(BasicBlock(), Reversed(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 3, 1)))
    converted, report = cnnfast.convert(model)
    assert report.swapped == [] and type(converted[0]).__name__ == "BasicBlock" and type(converted[1]) is Reversed
    assert "0 modules swapped" in str(report)


def test_a_module_under_two_names_stays_one_module():
    model = nn.Sequential(nn.ReLU(), nn.LocalResponseNorm(3))
    model.again = model[1]
    converted, report = cnnfast.convert(model)
    assert converted.again is converted[1] and type(converted.again) is cnnfast.nn.LocalResponseNorm
    assert len(report.swapped) == 1


def test_converted_resnet_keeps_torchvisions_attributes():
    original = tiny_resnet()
    converted, _ = cnnfast.convert(original)
    for name in ("inplanes", "groups", "base_width"):
        assert getattr(converted, name) == getattr(original, name), name
    assert converted.layer2[0].stride == 2 and converted.layer2[1].downsample is None


def test_tensors_and_state_dict_hooks_registered_on_converted_modules_are_kept_or_refused():
    model = tiny_resnet()
    model.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64))  # on the swapped top
    model.layer1[0].register_parameter("gate", nn.Parameter(torch.ones(1, dtype=torch.float64)))
    model.maxpool.register_buffer("stray", torch.ones(1))  # cnnfast's MaxPool2d is built anew: no place for it
    model.layer2[0].register_load_state_dict_pre_hook(lambda *args, **kwargs: None)
    converted, report = cnnfast.convert(model, inplace=True)
    assert converted.state_dict().keys() == model.state_dict().keys()
    assert converted.mean is model.mean and converted.layer1[0].gate is model.layer1[0].gate
    left = {name: why for name, _, why in report.left_alone}
    assert left == {"maxpool": "its stray would have no place in cnnfast's module",
                    "layer2.0": "it has state_dict hooks, which would no longer run"}
    assert type(converted.layer1[0]) is models.resnet.Bottleneck


def test_a_dense_block_whose_layer_has_state_dict_hooks_is_left_alone():
    # convert rebuilds torchvision's dense layers as cnnfast's: hooks bound to them would be lost.
    model = tiny_densenet()
    model.features.denseblock2.denselayer1.register_load_state_dict_pre_hook(lambda *args, **kwargs: None)
    converted, report = cnnfast.convert(model)
    left = {name: why for name, _, why in report.left_alone}
    assert left == {"features.denseblock2": "its denselayer1 is rebuilt, but it has state_dict hooks, which would "
                                            "no longer run"}
    assert type(converted.features.denseblock1) is cnnfast.nn.DenseBlock


def test_compiled_modules_and_instance_forwards_are_left_alone():
    # Module.compile() and an instance-level forward are bound to the original object: a swapped
    # module would still run them. (inplace: a deep copy drops Module.compile()'s cache.)
    model = tiny_resnet()
    model.layer1[0].compile(backend="eager")
    model.layer2[0].forward = model.layer2[0].forward
    model.layer3 = torch.compile(model.layer3, backend="eager")
    converted, report = cnnfast.convert(model, inplace=True)
    left = {name: why for name, _, why in report.left_alone}
    assert left["layer1.0"] == "it was compiled with Module.compile(): convert before compiling"
    assert left["layer2.0"] == "its forward is replaced on the instance, which cnnfast's forward would not run"
    assert left["layer3"].startswith("is compiled (torch.compile)")
    assert type(converted.layer4[0]) is models.resnet.Bottleneck
    with pytest.raises(TypeError, match="convert the model first, then compile"):
        cnnfast.convert(torch.compile(tiny_resnet(), backend="eager"))


def _torchvision_like_resnet():
    """reference_models.ResNet, shaped as torchvision's: forward calls _forward_impl, both written in
    torchvision.models.resnet."""
    class ResNet(reference_models.ResNet):
        def _forward_impl(self, x):
            return reference_models.ResNet.forward(self, x)

        def forward(self, x):
            return self._forward_impl(x)
    for method in (ResNet._forward_impl, ResNet.forward):
        method.__module__ = "torchvision.models.resnet"
    return ResNet


def test_a_resnet_whose_forward_impl_is_its_own_is_left_alone():
    class ResNet(_torchvision_like_resnet()):  # a user's subclass returning pooled features
        def _forward_impl(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return torch.flatten(self.avgpool(self.layer4(self.layer3(self.layer2(self.layer1(x))))), 1)
    patched = _torchvision_like_resnet()(reference_models.Bottleneck, [1, 1, 1, 1], num_classes=5)
    patched._forward_impl = lambda x: patched.layer1(patched.conv1(x))
    x = torch.randn(2, 3, 32, 32)
    instance_why = "its _forward_impl is replaced on the instance, which cnnfast's forward would not run"
    for model, why in ((ResNet(reference_models.Bottleneck, [1, 1, 1, 1], num_classes=5), None),
                       (patched, instance_why)):
        model.eval()
        converted, report = cnnfast.convert(model)
        assert not any(name == "" for name, _, _ in report.swapped)
        assert dict((name, reason) for name, _, reason in report.left_alone).get("") == why
        torch.testing.assert_close(converted(x), model(x))


def test_convert_rejects_what_is_not_a_module():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        cnnfast.convert(torch.zeros(1))


# ---- fuse_for_inference ---------------------------------------------------------------------

@pytest.mark.parametrize("build", [tiny_resnet, lambda: cnnfast.convert(tiny_resnet())[0], tiny_densenet,
                                   lambda: cnnfast.convert(tiny_densenet())[0]],
                         ids=["torch-resnet", "cnnfast-resnet", "torch-densenet", "cnnfast-densenet"])
def test_folding_batch_norm_keeps_eval_outputs(build):
    model = build().eval()
    fused = cnnfast.fuse_for_inference(model)
    folded = sum(isinstance(m, nn.Identity) for m in fused.modules())
    # In a ResNet every convolution feeds a BatchNorm; in a DenseNet only the stem's does (the rest
    # are pre-activation units).
    convolutions = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    expected = convolutions if hasattr(model, "layer1") else 1
    assert folded == expected
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-9, atol=1e-9)
    assert not any(isinstance(m, nn.Identity) for m in model.modules())  # a copy was folded


def test_folding_a_frozen_model_keeps_it_frozen():
    model = tiny_resnet().eval().requires_grad_(False)
    fused = cnnfast.fuse_for_inference(model)
    assert not any(p.requires_grad for p in fused.parameters())


def test_folding_keeps_a_trainable_bias_trainable_and_the_same_parameter():
    # BitFit-style fine-tuning: weights frozen, biases trained.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4)).eval()
    model[0].weight.requires_grad_(False)
    bias = model[0].bias
    fused = cnnfast.fuse_for_inference(model, inplace=True)
    assert fused[0].bias is bias and bias.requires_grad and not fused[0].weight.requires_grad


def test_folding_needs_eval_mode_and_leaves_pre_activation_units_alone():
    with pytest.raises(ValueError, match="model.eval"):
        cnnfast.fuse_for_inference(tiny_resnet().train())
    model = models.preact_resnet18(num_classes=3).eval()
    fused = cnnfast.fuse_for_inference(model)
    assert not any(isinstance(m, nn.Identity) for m in fused.modules())


# ---- what convert and fuse_for_inference must not change ---------------------------------------

def test_children_keep_their_own_mode():
    model = tiny_resnet().train()
    model.layer2[0].bn2.eval()  # a frozen BatchNorm while fine-tuning
    converted, _ = cnnfast.convert(model)
    assert converted.training and not converted.layer2[0].bn2.training and converted.layer2[1].bn2.training


def _every_swappable_kind():
    torch.manual_seed(0)
    return nn.ModuleDict({
        "resnet": tiny_resnet(), "densenet": tiny_densenet(),
        "lrn": nn.LocalResponseNorm(3), "pool": nn.MaxPool2d(3, 2),
        "bn_relu_conv": nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 1)),
        "relu_lrn_pool": nn.Sequential(nn.ReLU(), nn.LocalResponseNorm(3), nn.MaxPool2d(3, 2)),
        "avg_pool": nn.Sequential(nn.AvgPool2d(2))})


@pytest.mark.parametrize("mode", ["eval", "mixed"])
def test_every_swapped_module_keeps_its_training_mode(mode):
    model = _every_swappable_kind().eval()
    if mode == "mixed":  # training, but for a few modules frozen in eval mode
        model.train()
        for name in ("lrn", "relu_lrn_pool", "densenet.features.denseblock1", "resnet.layer1"):
            model.get_submodule(name).eval()
    converted, report = cnnfast.convert(model)
    assert swapped_types(report) == ["Bottleneck", "LocalResponseNorm", "MaxPool2d", "ResNet", "Sequential",
                                     "_DenseBlock", "_Transition"]
    # Every module under its own name (a swapped dense block's layers keep theirs).
    assert {name: m.training for name, m in converted.named_modules()} == \
        {name: m.training for name, m in model.named_modules()}


def test_a_swapped_dense_block_says_its_output_must_not_be_modified_in_place():
    # Not wrong numbers but a loud error: the shared buffer the block returns is read by its backward.
    torch.manual_seed(0)
    original = nn.Sequential(reference_models._DenseBlock(2, 4, 2, 4, 0.0), nn.ReLU(inplace=True),
                             nn.Conv2d(12, 3, 1))
    converted, report = cnnfast.convert(original)
    assert list(report.notes) == ["0"] and "in place" in report.notes["0"]
    assert "0: _DenseBlock -> cnnfast DenseBlock (its output is the buffer its backward reads" in str(report)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    original(x).sum().backward()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        converted(x).sum().backward()


def test_sequential_subclasses_stay_instances_of_their_class():
    model = tiny_densenet()
    converted, _ = cnnfast.convert(model)
    transition = converted.features.transition1
    assert isinstance(transition, reference_models._Transition)
    assert isinstance(transition, cnnfast.nn.FusedSequential)


def test_a_converted_model_with_sequential_subclasses_saves_whole(tmp_path):
    # The fused subclass is made at run time: torch.save of the whole model (and spawned workers)
    # must still find it, in a process that has not made it yet too.
    converted, _ = cnnfast.convert(tiny_densenet())
    path = tmp_path / "model.pt"
    torch.save(converted, path)
    code = (f"import torch, cnnfast; m = torch.load({str(path)!r}, weights_only=False); "
            "t = m.features.transition1; print(type(t).__name__, isinstance(t, cnnfast.nn.FusedSequential))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.stdout.split() == ["Fused_Transition", "True"], result.stderr
    loaded = torch.load(path, weights_only=False)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(loaded.eval()(x), converted.eval()(x), rtol=0, atol=0)


def test_modules_with_hooks_or_another_activation_are_left_alone():
    model = tiny_resnet()
    model.layer1[0].register_forward_hook(lambda module, args, output: None)
    relu_calls = []
    model.layer2[0].relu.register_forward_hook(lambda module, args, output: relu_calls.append(1))
    model.layer3[0].relu = nn.SiLU()
    converted, report = cnnfast.convert(model)
    left = {name: why for name, _, why in report.left_alone}
    assert "hooks" in left["layer1.0"] and "SiLU" in left["layer3.0"]
    assert "layer2.0" not in left  # cnnfast's block calls a hooked relu, unfused
    assert type(converted.layer2[0]) is cnnfast.models.resnet.Bottleneck
    assert type(converted.layer1[0]) is reference_models.Bottleneck
    assert type(converted.layer3[0]) is reference_models.Bottleneck
    assert "ResNet" in {old for _, old, _ in report.swapped}  # the top keeps its ReLU: swapped
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert_step_matches(converted, model, x)
    assert len(relu_calls) == 2 * 3  # three calls a forward, in each model


@pytest.mark.parametrize("change", ["activation", "hook", "group norm"])
def test_dense_blocks_the_shared_buffer_cannot_compute_are_left_alone(change):
    model = tiny_densenet()
    layer = model.features.denseblock2.denselayer1
    if change == "activation":
        layer.relu2 = nn.SiLU()
    elif change == "hook":
        layer.register_forward_hook(lambda module, args, output: None)
    else:
        layer.norm1 = nn.GroupNorm(1, layer.norm1.num_features).double()
    converted, report = cnnfast.convert(model)
    left = {name: why for name, _, why in report.left_alone}
    assert list(left) == ["features.denseblock2"]
    assert {"activation": "activation", "hook": "hooks", "group norm": "norm"}[change] in left["features.denseblock2"]
    assert isinstance(converted.features.denseblock1, cnnfast.nn.DenseBlock)
    assert_step_matches(converted, model, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_fused_runs_with_hooked_or_non_zero_padded_modules_run_the_plain_modules():
    torch.manual_seed(0)
    calls = []
    original = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(),
                             nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", bias=False),
                             nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).double()
    original[5].register_forward_hook(lambda module, args, output: calls.append(output.shape))
    converted, _ = cnnfast.convert(original)
    assert cnnfast.nn.sequential.fusable_runs(converted) == 2  # BN-ReLU and BN-ReLU, no fused conv
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    assert_step_matches(converted, original, x)
    assert len(calls) == 2


def test_reflect_padding_in_a_resnet_block_is_honoured():
    torch.manual_seed(0)
    ours = models.resnet18(num_classes=3).double()
    theirs = reference_models.resnet(18, num_classes=3).double()
    for model in (ours, theirs):
        model.layer1[0].conv2.padding_mode = "reflect"
    theirs.load_state_dict(ours.state_dict())
    assert_step_matches(ours, theirs, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_shared_or_parametrized_convolutions_are_not_folded():
    torch.manual_seed(0)
    shared = nn.Conv2d(3, 3, 1)
    model = nn.Sequential(nn.Sequential(shared, nn.BatchNorm2d(3)), nn.Sequential(shared, nn.BatchNorm2d(3)),
                          nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 3, 1)), nn.BatchNorm2d(3)))
    randomise_batch_norms(model)
    model.eval()
    fused = cnnfast.fuse_for_inference(model)
    assert not any(isinstance(m, nn.Identity) for m in fused.modules())
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(fused(x), model(x))


class _Tied(nn.Module):
    """conv -> bn, and another conv or BatchNorm holding one of their Parameters (tied weights)."""

    def __init__(self, tied):
        super().__init__()
        self.pair = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3))
        owner, name = tied.split(".")
        self.other = nn.Conv2d(3, 3, 3, padding=1) if owner == "conv" else nn.BatchNorm2d(3)
        setattr(self.other, name, getattr(self.pair[0 if owner == "conv" else 1], name))

    def forward(self, x):
        return self.pair(x) + self.other(x)


@pytest.mark.parametrize("tied", ["conv.weight", "conv.bias", "bn.weight"])
def test_a_convolution_whose_weight_or_bias_is_tied_elsewhere_is_not_folded(tied):
    # Folding scales the conv's weight and bias in place: the other module holding one would change.
    torch.manual_seed(0)
    model = randomise_batch_norms(_Tied(tied)).double().eval()
    fused = cnnfast.fuse_for_inference(model)
    folded = isinstance(fused.pair[1], nn.Identity)
    assert folded == (tied == "bn.weight")  # the BatchNorm's parameters are only read
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-9, atol=1e-9)


def test_pre_activation_projection_refuses_synchronised_statistics(monkeypatch):
    model = models.preact_resnet18(num_classes=3)
    block = model.layer2[0]
    monkeypatch.setattr(block.unit1, "_sync_group", lambda: object())
    with pytest.raises(NotImplementedError, match="synchronise batch statistics"):
        block(torch.randn(2, 64, 8, 8))


@pytest.mark.parametrize("with_conv", [False, True], ids=["bn-relu", "bn-relu-conv"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 4, 4), (3, 4, 4)], ids=["5-d", "3-d"])
def test_a_converted_runs_input_of_other_dims_is_the_batch_norms_error(with_conv, shape):
    """As torch's nn.BatchNorm2d: a ValueError naming the BatchNorm2d (not a cnnfast module the
    user never built), raised before its step is counted."""
    plain = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), *([nn.Conv2d(3, 4, 1)] if with_conv else []))
    converted, _ = cnnfast.convert(plain)
    with pytest.raises(ValueError, match="expected 4D input"):
        plain(torch.randn(shape))
    with pytest.raises(ValueError, match=r"^BatchNorm2d: expected 4-d input, got shape"):
        converted(torch.randn(shape))
    assert converted[0].num_batches_tracked == 0

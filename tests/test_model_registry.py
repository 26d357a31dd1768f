"""cnnfast.models.list_models / get_model / freeze_backbone."""
from __future__ import annotations

import pytest
import torch

from cnnfast import models


def test_every_family_is_listed_and_buildable_by_name():
    names = models.list_models()
    assert names == sorted(names)
    for expected in ("resnet50", "resnext101_32x8d", "wide_resnet50_2", "preact_resnet18", "densenet121",
                     "densenet_bc_100_k12"):
        assert expected in names
    with torch.device("meta"):
        for name in names:
            model = models.get_model(name, num_classes=3)
            head = dict(model.named_modules())[models.classifier_of(model)]
            assert (head.out_features if isinstance(head, torch.nn.Linear) else head.out_channels) == 3


def test_torchvision_and_timm_download_arguments_are_accepted_and_pretrained_true_refused():
    """Calls written for torchvision (progress=) and timm (pretrained=False) run unchanged; asking
    for a download is an error that names weights=, never a silently random model."""
    with torch.device("meta"):
        for name in models.list_models():
            model = models.get_model(name, progress=False, pretrained=False, num_classes=3)
            assert isinstance(model, torch.nn.Module)
            with pytest.raises(ValueError, match="pretrained=True: cnnfast downloads nothing; pass weights="):
                models.get_model(name, pretrained=True)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet05'.*did you mean resnet50"):
        models.get_model("resnet05")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        models.get_model("resnet18", weights=tmp_path / "missing.pth")


def test_freeze_backbone_trains_only_the_head_then_everything():
    model = models.get_model("resnet18", num_classes=4)
    models.freeze_backbone(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.conv1.weight.grad is None and model.fc.weight.grad is not None
    models.freeze_backbone(model, freeze=False)
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_backbone_with_a_named_head_and_a_wrong_one():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    models.freeze_backbone(model, head="0")
    assert model[0].weight.requires_grad and not any(p.requires_grad for p in model[2].parameters())
    with pytest.raises(ValueError, match="no module named 'head'"):
        models.freeze_backbone(model, head="head")


def test_freeze_backbone_finds_a_head_put_in_place_of_the_models_own():
    model = models.get_model("alexnet", num_classes=4)
    model.classifier = torch.nn.Linear(256 * 6 * 6, 3)  # classifier_name says classifier.6
    models.freeze_backbone(model)
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["classifier.weight",
                                                                                 "classifier.bias"]


def test_freeze_backbone_finds_the_last_layer_of_a_longer_head():
    model = models.get_model("alexnet", num_classes=4)
    model.classifier = torch.nn.Sequential(*model.classifier[:6], torch.nn.Linear(4096, 512), torch.nn.ReLU(),
                                           torch.nn.Linear(512, 3))  # classifier.6 is a middle layer now
    models.freeze_backbone(model)
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["classifier.8.weight",
                                                                                 "classifier.8.bias"]


@pytest.mark.parametrize("build", [
    lambda: models.resnet18(num_classes=0),  # a Linear with no outputs
    lambda: models.DPN(k_sec=(1, 1, 1), inc_sec=(4, 4, 4), k_r=8, groups=2, small=True, num_init_features=8,
                       num_classes=0)], ids=["resnet", "dpn"])
def test_freeze_backbone_refuses_a_headless_model(build):
    with pytest.raises(ValueError, match="no parameters"):
        models.freeze_backbone(build())


def test_weights_under_nested_wrappers_and_training_script_layouts():
    source = models.get_model("resnet18", num_classes=3)
    state = source.state_dict()
    layouts = [{"_orig_mod.module." + k: v for k, v in state.items()},  # torch.compile of a DDP model
               {"module._orig_mod." + k: v for k, v in state.items()},  # DDP of a compiled model
               {"n_averaged": torch.tensor(4), **{"module." + k: v for k, v in state.items()}},  # AveragedModel
               {"epoch": 3, "model_state_dict": state},  # PyTorch's tutorial checkpoint
               {"epoch": 3, "state_dict": {"model." + k: v for k, v in state.items()}},  # Lightning's (self.model)
               {"net._orig_mod." + k: v for k, v in state.items()},  # a compiled model held as self.net
               {"module.net." + k: v for k, v in state.items()}]  # DDP of a module holding the model
    for weights in layouts:
        loaded = models.get_model("resnet18", weights=weights, num_classes=3)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_weights_from_wrappers_memory_and_whole_model_pickles(tmp_path):
    source = models.get_model("resnet18", num_classes=3)
    path = tmp_path / "compiled.pth"
    torch.save({"_orig_mod." + k: v for k, v in source.state_dict().items()}, path)  # a torch.compile'd model's
    for weights in (path, source.state_dict()):
        loaded = models.get_model("resnet18", weights=weights, num_classes=3)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())
    torch.save(source, tmp_path / "whole.pth")
    with pytest.raises(ValueError, match="state_dict"):
        models.get_model("resnet18", weights=tmp_path / "whole.pth", num_classes=3)
    with pytest.raises(TypeError, match="weights: expected the path of a local checkpoint or a state_dict"):
        models.get_model("resnet18", weights=3)

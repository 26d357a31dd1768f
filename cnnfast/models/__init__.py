"""Whole architectures on cnnfast's ops, with torchvision-compatible state_dicts."""
from cnnfast.models.densenet import (DenseNet, densenet121, densenet161, densenet169, densenet201, densenet264,
                                     densenet_bc, densenet_bc_100_k12, densenet_bc_190_k40, densenet_bc_250_k24)

__all__ = ["DenseNet", "densenet121", "densenet161", "densenet169", "densenet201", "densenet264", "densenet_bc",
           "densenet_bc_100_k12", "densenet_bc_190_k40", "densenet_bc_250_k24"]
from cnnfast.models.preact_resnet import (PreActResNet, preact_resnet18, preact_resnet34, preact_resnet50,
                                          preact_resnet101, preact_resnet152)
from cnnfast.models.registry import classifier_of, freeze_backbone, get_model, list_models
from cnnfast.models.resnet import (ResNet, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d,
                                   resnext101_32x8d, wide_resnet50_2, wide_resnet101_2)

__all__ += ["PreActResNet", "ResNet", "classifier_of", "freeze_backbone", "get_model", "list_models",
            "preact_resnet18", "preact_resnet34", "preact_resnet50", "preact_resnet101", "preact_resnet152",
            "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
            "wide_resnet50_2", "wide_resnet101_2"]

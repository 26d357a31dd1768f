"""Whole architectures on cnnfast's ops, with torchvision/timm-compatible state_dicts, and a
registry of them by name (list_models, get_model)."""
from cnnfast.models.alexnet import AlexNet, AlexNetPaper, alexnet, alexnet_paper
from cnnfast.models.densenet import (DenseNet, densenet121, densenet161, densenet169, densenet201, densenet264,
                                     densenet_bc, densenet_bc_100_k12, densenet_bc_190_k40, densenet_bc_250_k24)
from cnnfast.models.dpn import DPN, dpn68, dpn68b, dpn92, dpn98, dpn107, dpn131
from cnnfast.models.preact_resnet import (PreActResNet, preact_resnet18, preact_resnet34, preact_resnet50,
                                          preact_resnet101, preact_resnet152)
from cnnfast.models.resnet import (ResNet, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d,
                                   resnext101_32x8d, wide_resnet50_2, wide_resnet101_2)
from cnnfast.models.registry import classifier_of, freeze_backbone, get_model, list_models

__all__ = ["AlexNet", "AlexNetPaper", "alexnet", "alexnet_paper",
           "DenseNet", "densenet121", "densenet161", "densenet169", "densenet201", "densenet264", "densenet_bc",
           "densenet_bc_100_k12", "densenet_bc_190_k40", "densenet_bc_250_k24",
           "DPN", "dpn68", "dpn68b", "dpn92", "dpn98", "dpn107", "dpn131",
           "PreActResNet", "preact_resnet18", "preact_resnet34", "preact_resnet50", "preact_resnet101",
           "preact_resnet152",
           "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
           "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2",
           "classifier_of", "freeze_backbone", "get_model", "list_models"]

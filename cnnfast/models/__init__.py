"""Whole architectures on cnnfast's ops, with torchvision-compatible state_dicts."""
from cnnfast.models.alexnet import AlexNet, AlexNetPaper, alexnet, alexnet_paper
from cnnfast.models.densenet import (DenseNet, densenet121, densenet161, densenet169, densenet201, densenet264,
                                     densenet_bc, densenet_bc_100_k12, densenet_bc_190_k40, densenet_bc_250_k24)

__all__ = ["AlexNet", "AlexNetPaper", "alexnet", "alexnet_paper", "DenseNet", "densenet121", "densenet161",
           "densenet169", "densenet201", "densenet264", "densenet_bc", "densenet_bc_100_k12", "densenet_bc_190_k40",
           "densenet_bc_250_k24"]

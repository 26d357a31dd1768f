"""Whole architectures on cnnfast's ops, with torchvision-compatible state_dicts."""
from cnnfast.models.densenet import (DenseNet, densenet121, densenet161, densenet169, densenet201, densenet264,
                                     densenet_bc, densenet_bc_100_k12, densenet_bc_190_k40, densenet_bc_250_k24)

__all__ = ["DenseNet", "densenet121", "densenet161", "densenet169", "densenet201", "densenet264", "densenet_bc",
           "densenet_bc_100_k12", "densenet_bc_190_k40", "densenet_bc_250_k24"]
from cnnfast.models.dpn import DPN, dpn68, dpn68b, dpn92, dpn98, dpn107, dpn131

__all__ += ["DPN", "dpn68", "dpn68b", "dpn92", "dpn98", "dpn107", "dpn131"]

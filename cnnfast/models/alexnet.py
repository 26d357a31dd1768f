"""AlexNet on cnnfast's ops: torchvision's variant (its keys, shapes and initialisation) and the
network of Krizhevsky, Sutskever and Hinton 2012, "ImageNet Classification with Deep Convolutional
Neural Networks", as published (LRN, grouped convolutions, the paper's initialisation)."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnfast._backend import fx_tracing
from cnnfast.models._weights import build
from cnnfast.nn.pooling import MaxPool2d
from cnnfast.nn.relu_lrn_max_pool import ReLULRNMaxPool2d

__all__ = ["AlexNet", "AlexNetPaper", "alexnet", "alexnet_paper"]


class AlexNet(nn.Module):
    """torchvision.models.AlexNet: the same modules, state_dict keys (features.0/3/6/8/10,
    classifier.1/4/6), shapes and default initialisation; its three 3/2 max-pools keep a uint8
    argmax for backward instead of their input and int64 indices."""

    classifier_name = "classifier.6"  # replaced when a checkpoint's num_classes differs

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# The paper's local response normalisation (section 3.3): k = 2, n = 5, alpha = 1e-4, beta = 0.75 in
# b = a / (k + alpha * sum a^2)^beta. torch's LRN (and cnnfast's) divides alpha by n, so the paper's
# numbers need alpha = 1e-4 * n here.
PAPER_LRN = dict(size=5, alpha=1e-4 * 5, beta=0.75, k=2.0)


class AlexNetPaper(nn.Module):
    """AlexNet as Krizhevsky et al. 2012 published it, for 227x227 inputs (so that conv1 gives 55x55
    and the three overlapping 3/2 pools 27x27, 13x13 and 6x6).

    Children, named after the paper's layers:

    - ``features``: ``conv1`` (96 of 11x11, stride 4), ``norm_pool1`` (ReLU -> LRN -> max-pool
      3/2, one cnnfast.nn.ReLULRNMaxPool2d), ``conv2`` (256 of 5x5, padding 2, `groups`),
      ``norm_pool2``, ``conv3`` (384 of 3x3, padding 1) and ``relu3``, ``conv4`` (384 of 3x3,
      padding 1, `groups`) and ``relu4``, ``conv5`` (256 of 3x3, padding 1, `groups`), ``relu5``
      and ``pool5`` (max-pool 3/2);
    - ``classifier``: ``dropout6``, ``fc6`` (9216 -> 4096), ``relu6``, ``dropout7``, ``fc7``
      (4096 -> 4096), ``relu7``, ``fc8`` (4096 -> num_classes).

    groups=2 is the paper's split over two GPUs: conv2, conv4 and conv5 see only the kernel maps of
    their own GPU, conv3 and the fully connected layers all of them (60,965,224 parameters).
    groups=1 is the one-tower network. The LRN uses the paper's k=2, n=5, alpha=1e-4, beta=0.75;
    the paper's alpha has no division by n, so the module is given torch's alpha = 1e-4 * 5.

    Initialisation as in section 5: every weight from N(0, 0.01); biases 1 in conv2, conv4, conv5,
    fc6 and fc7 (to give the ReLUs positive inputs early on), 0 elsewhere.
    """

    classifier_name = "classifier.fc8"  # replaced when a checkpoint's num_classes differs

    def __init__(self, num_classes: int = 1000, groups: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        if groups not in (1, 2):
            raise ValueError(f"alexnet_paper: groups must be 1 (one tower) or 2 (the paper's two GPUs), got {groups}")
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 96, kernel_size=11, stride=4)),
            ("norm_pool1", ReLULRNMaxPool2d(**PAPER_LRN, kernel_size=3, stride=2)),
            ("conv2", nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=groups)),
            ("norm_pool2", ReLULRNMaxPool2d(**PAPER_LRN, kernel_size=3, stride=2)),
            ("conv3", nn.Conv2d(256, 384, kernel_size=3, padding=1)),
            ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=groups)),
            ("relu4", nn.ReLU(inplace=True)),
            ("conv5", nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=groups)),
            ("relu5", nn.ReLU(inplace=True)),
            ("pool5", MaxPool2d(kernel_size=3, stride=2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("dropout6", nn.Dropout(p=dropout)),
            ("fc6", nn.Linear(256 * 6 * 6, 4096)),
            ("relu6", nn.ReLU(inplace=True)),
            ("dropout7", nn.Dropout(p=dropout)),
            ("fc7", nn.Linear(4096, 4096)),
            ("relu7", nn.ReLU(inplace=True)),
            ("fc8", nn.Linear(4096, num_classes)),
        ]))
        ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}
        for name, module in (*self.features.named_children(), *self.classifier.named_children()):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.constant_(module.bias, 1.0 if name in ones else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        if not fx_tracing() and features.shape[-2:] != (6, 6):  # (a traced shape is not known)
            raise ValueError(f"alexnet_paper: input must be 227x227 (conv1 -> 55x55 -> pools of 27, 13, 6), got "
                             f"{tuple(x.shape[-2:])}, which pools to {tuple(features.shape[-2:])}")
        return self.classifier(torch.flatten(features, 1))


def alexnet(num_classes: int = 1000, dropout: float = 0.5, weights=None, **kwargs) -> AlexNet:
    """torchvision's AlexNet. `weights`: a local checkpoint (e.g. torchvision's alexnet-owt-7be5be79.pth);
    with another num_classes, everything but classifier.6 is loaded."""
    return build(AlexNet, weights, dict(num_classes=num_classes, dropout=dropout, **kwargs))


def alexnet_paper(num_classes: int = 1000, groups: int = 2, dropout: float = 0.5, weights=None,
                  **kwargs) -> AlexNetPaper:
    """Krizhevsky et al. 2012's AlexNet (AlexNetPaper). `weights`: a local checkpoint of this model;
    with another num_classes, everything but classifier.fc8 is loaded."""
    return build(AlexNetPaper, weights, dict(num_classes=num_classes, groups=groups, dropout=dropout, **kwargs))

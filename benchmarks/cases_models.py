"""Training steps of whole models: cnnfast.models against the same architecture in plain torch.nn
(cnnfast/reference_models.py, written as torchvision and timm write it: "torch", also what
torch.compile compiles), on the same parameters. A row is one step: the gradients of the input and
of every parameter, and one running-statistics update. DenseNet-121's rows are cases_densenet's
(with torchvision's checkpointed variant beside them).
"""
from __future__ import annotations

import torch

from benchmarks.harness import Case, Ops, model_step_cases, share_parameters
from cnnfast import models, reference_models

# (label, cnnfast constructor, its plain torch.nn twin, input size, CPU batch, GPU batch)
MODELS = (
    ("AlexNet (paper)", "alexnet_paper", reference_models.AlexNetPaper, 227, 8, 128),
    ("ResNet-50", "resnet50", lambda: reference_models.resnet(50), 224, 2, 64),
    ("DPN-92", "dpn92", lambda: reference_models.DPN((3, 4, 20, 3), (16, 32, 24, 128), 96, 32), 224, 2, 64),
)
_REFERENCES = {constructor: reference for _, constructor, reference, *_ in MODELS}


def model_pair(device, dtype, constructor: str) -> Ops:
    torch.manual_seed(0)
    theirs = _REFERENCES[constructor]().to(device, dtype).train()
    ours = getattr(models, constructor)().to(device, dtype).train()
    share_parameters(ours, theirs)
    return Ops(torch=theirs, cnnfast=ours, parameters=tuple(theirs.parameters()))


def cases(device: str, quick: bool, variants: list[str]) -> list[Case]:
    entries = [(label, constructor, size, cpu, gpu) for label, constructor, _, size, cpu, gpu in MODELS]
    return model_step_cases(f"{__name__}:model_pair", entries, device, quick, variants)

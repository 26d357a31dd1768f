"""Pre-activation ResNets against the same modules run as plain torch.nn calls (BN, ReLU, conv
one after another), and their layout."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnfast import models
from cnnfast.models.preact_resnet import PreActBasicBlock, PreActBottleneck, PreActResNet

from helpers import assert_step_matches, randomise_batch_norms


def plain_unit(unit, x):
    return unit.conv(F.relu(unit.bn(x)))


def plain_block(block, x):
    units = [m for name, m in block.named_children() if name.startswith("unit")]
    if block.shortcut is None:
        identity, out = x, plain_unit(units[0], x)
    else:
        preactivated = F.relu(units[0].bn(x))
        identity, out = block.shortcut(preactivated), units[0].conv(preactivated)
    for unit in units[1:]:
        out = plain_unit(unit, out)
    return out + identity


class PlainPreActResNet(PreActResNet):
    """The same modules, run by torch.nn calls as the paper draws the network."""

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 3, 2, 1)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = plain_block(block, x)
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("block", [PreActBasicBlock, PreActBottleneck], ids=["basic", "bottleneck"])
def test_training_step_and_eval_match_plain_torch(block):
    torch.manual_seed(0)
    ours = PreActResNet(block, [1, 2, 1, 1], num_classes=6)
    randomise_batch_norms(ours)
    plain = PlainPreActResNet(block, [1, 2, 1, 1], num_classes=6)
    plain.load_state_dict(ours.state_dict())
    ours.double(), plain.double()
    x = torch.randn(2, 3, 35, 33, dtype=torch.float64)
    assert_step_matches(ours.train(), plain.train(), x)
    ours.eval(), plain.eval()
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,blocks,expansion", [("preact_resnet18", [2, 2, 2, 2], 1),
                                                   ("preact_resnet50", [3, 4, 6, 3], 4),
                                                   ("preact_resnet152", [3, 8, 36, 3], 4)])
def test_depths_and_widths(name, blocks, expansion):
    with torch.device("meta"):
        model = getattr(models, name)(num_classes=10)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == blocks
    assert model.fc.in_features == 512 * expansion and model.fc.out_features == 10
    # Projections only where the shape changes: the first block of each stage (and of layer1 with
    # bottlenecks, which widen 64 -> 256).
    projections = [block.shortcut is not None for i in range(1, 5) for block in getattr(model, f"layer{i}")]
    assert sum(projections) == (4 if expansion == 4 else 3)


def test_layers_must_be_four_positive_counts():
    with pytest.raises(ValueError, match="layers must be four positive block counts"):
        PreActResNet(PreActBasicBlock, [2, 2, 2])

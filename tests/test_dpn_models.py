"""cnnfast.models' DPNs: timm's keys, shapes and parameter counts (committed fixtures made with
timm 1.0.31 itself by tools/make_timm_dpn_fixture.py), timm's outputs on deterministic weights,
the shared-buffer stages against the plain torch.nn DPN of cnnfast/reference_models.py (outputs,
every gradient, running statistics), what they keep for backward, and loading local weights."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import cnnfast
from cnnfast import models, reference_models
from cnnfast.nn.dpn import DualPathBlock, dual_path_stage

from dpn_fixture_weights import deterministic_input, deterministic_state
from helpers import (TINY_DPN, assert_low_precision_close, assert_state_dict_layout, assert_training_steps_match,
                     backend_params, randomise_batch_norms, state_dict_lines)

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "timm_dpn_state_dicts.json").read_text())
NAMES = ["dpn68", "dpn68b", "dpn92", "dpn98", "dpn107", "dpn131"]


# ---- timm's keys, shapes, parameter counts and outputs ------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_shapes_and_parameter_counts_are_timms(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = getattr(models, name)()
    assert_state_dict_layout(model, FIXTURES[name])


def test_reference_here_has_timms_keys():
    """The plain DPN of cnnfast/reference_models.py is timm's structure: the same keys as timm's dpn68b."""
    with torch.device("meta"):
        reference = reference_models.DPN((3, 4, 12, 3), (16, 32, 32, 64), 128, 32, small=True, num_init_features=10, b=True)
    assert state_dict_lines(reference) == FIXTURES["dpn68b"]["keys_and_shapes"]


@pytest.mark.parametrize("name", ["dpn68", "dpn68b"])
def test_outputs_are_timms(name):
    """timm's own outputs (fixture), on weights and input built from formulas (no random generator):
    eval, then train mode (batch statistics)."""
    model = getattr(models, name)(num_classes=10).double()
    model.load_state_dict(deterministic_state(model.state_dict()), strict=True)
    expected = FIXTURES["outputs"][name]
    x = deterministic_input()
    for mode in ("eval", "train"):
        model.train(mode == "train")
        with torch.no_grad():
            y = model(x)
        torch.testing.assert_close(y, torch.tensor(expected[mode], dtype=torch.float64), rtol=1e-9, atol=1e-9)


# ---- the shared-buffer stages against the plain DPN ----------------------------------------------

def compare_steps(ours, reference, x_size, modes=("train", "train", "eval"), device="cpu"):
    reference.load_state_dict(ours.state_dict(), strict=True)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 3, x_size, x_size, generator=generator, dtype=torch.float64).to(device) for _ in modes]
    assert_training_steps_match(ours.to(device), reference.to(device), inputs, modes)


# Dropout acts on the pooled features only (timm's drop_rate): once is enough.
@pytest.mark.parametrize("b,drop_rate,recompute_residual", [(False, 0.0, False), (True, 0.3, False), (True, 0.0, True)],
                         ids=["c1x1_c", "b-split-c1x1_c1-c1x1_c2-dropout", "b-split-recompute-residual"])
def test_tiny_dpn_matches_plain_reference(b, drop_rate, recompute_residual):
    torch.manual_seed(0)
    ours = randomise_batch_norms(models.DPN(**TINY_DPN, b=b, drop_rate=drop_rate, recompute_residual=recompute_residual).double())
    reference = reference_models.DPN(**TINY_DPN, b=b, drop_rate=drop_rate).double()
    compare_steps(ours, reference, 32)


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] != "reference"])
def test_tiny_dpn_matches_plain_reference_on_each_backend(backend, device):
    """The stages' kernels of each backend (the Triton 1x1 GEMMs read a block's input as the
    buffer's leading channels, and in backward as the scratch copy's)."""
    torch.manual_seed(0)
    ours = randomise_batch_norms(models.DPN(**TINY_DPN).double())
    with cnnfast.backend(backend):
        compare_steps(ours, reference_models.DPN(**TINY_DPN).double(), 16, ("train", "eval"), device)


def test_tiny_dpn_odd_size_imagenet_stem_matches_plain_reference():
    """7x7 stem, odd spatial sizes through the strided projections and 3x3 convolutions."""
    config = {**TINY_DPN, "small": False}
    torch.manual_seed(0)
    ours = randomise_batch_norms(models.DPN(**config).double())
    compare_steps(ours, reference_models.DPN(**config).double(), 45, ("train", "eval"))


def test_memory_efficient_false_is_the_same_model():
    torch.manual_seed(0)
    ours = randomise_batch_norms(models.DPN(**TINY_DPN, b=True).double())
    plain = models.DPN(**TINY_DPN, b=True, memory_efficient=False).double()
    compare_steps(ours, plain, 32, ("train",))


@pytest.mark.parametrize("change", ["hooks", "conv bias", "convert_sync_bn"])
def test_blocks_changed_after_construction_run_block_by_block(change):
    torch.manual_seed(0)
    ours = randomise_batch_norms(models.DPN(**TINY_DPN).double())
    calls = []
    block = ours.features.conv3_2
    if change == "hooks":
        block.register_forward_hook(lambda *args: calls.append("block"))
        block.c3x3_b.conv.register_forward_hook(lambda *args: calls.append("conv"))
    elif change == "conv bias":
        block.c1x1_a.conv.bias = torch.nn.Parameter(torch.linspace(-1, 1, block.c1x1_a.conv.out_channels,
                                                                   dtype=torch.float64))
    else:  # statistics to be shared across ranks: the stage op has no all-reduce
        block.c1x1_a.process_group = "a group"
    assert not cnnfast.nn.dpn._block_as_built(block)
    plain = models.DPN(**TINY_DPN, memory_efficient=False).double()
    if change == "conv bias":
        plain.features.conv3_2.c1x1_a.conv.bias = torch.nn.Parameter(torch.zeros_like(block.c1x1_a.conv.bias))
    if change != "convert_sync_bn":
        compare_steps(ours, plain, 32, ("train", "eval"))
    assert calls == (["conv", "block"] * 2 if change == "hooks" else [])


def test_dpn68_training_step_matches_plain_reference():
    """The real dpn68 (groups 32, 12 blocks in its third stage), one training step at 40x40 (the last
    stage at 3x3: see dpn_fixture_weights.deterministic_input), residuals replayed in backward."""
    torch.manual_seed(0)
    ours = randomise_batch_norms(models.dpn68(num_classes=4, recompute_residual=True).double())
    reference = reference_models.DPN((3, 4, 12, 3), (16, 32, 32, 64), 128, 32, num_classes=4, small=True,
                       num_init_features=10).double()
    compare_steps(ours, reference, 40, ("train",))


def test_channels_last_matches_plain_reference():
    torch.manual_seed(0)
    ours = randomise_batch_norms(models.DPN(**TINY_DPN).double()).to(memory_format=torch.channels_last)
    reference = reference_models.DPN(**TINY_DPN).double().to(memory_format=torch.channels_last)
    compare_steps(ours, reference, 32, ("train",))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bfloat16_autocast_within_twice_plain_error(mode):
    """Under CPU autocast (bf16 convolutions), against the plain DPN in fp64: output and input
    gradient errors at most twice those of the plain DPN under the same autocast."""
    torch.manual_seed(0)
    ours = randomise_batch_norms(models.DPN(**TINY_DPN)).train(mode == "train")
    reference = reference_models.DPN(**TINY_DPN).train(mode == "train")
    reference.load_state_dict(ours.state_dict())
    exact = reference_models.DPN(**TINY_DPN).double().train(mode == "train")
    exact.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    x_exact = x.clone().requires_grad_()
    y_exact = exact(x_exact)
    y_exact.square().sum().backward()
    results = []
    for model in (ours, reference):
        xi = x.float().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(xi)
        y.float().square().sum().backward()
        results.append((y, xi.grad))
    (y, dx), (y_ref, dx_ref) = results
    assert y.dtype == y_ref.dtype
    assert_low_precision_close(y, y_ref, y_exact.detach())
    assert_low_precision_close(dx, dx_ref, x_exact.grad)


def test_stage_without_input_gradient_and_frozen_parameters():
    """A stage whose input needs no gradient, some parameters frozen: the others' gradients as plain."""
    torch.manual_seed(0)
    ours = randomise_batch_norms(models.DPN(**TINY_DPN).double())
    reference = reference_models.DPN(**TINY_DPN).double()
    reference.load_state_dict(ours.state_dict())
    for model in (ours, reference):
        model.features.conv2_2.c1x1_a.requires_grad_(False)
        model.features.conv1_1.requires_grad_(False)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for model in (ours, reference):
        model(x).square().sum().backward()
    theirs = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, theirs[name].grad, rtol=1e-9, atol=1e-10)
        else:
            assert p.grad is None and theirs[name].grad is None


def test_stages_keep_less_for_backward_than_plain():
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    saved = {}
    reference = reference_models.DPN((3, 4, 12, 3), (16, 32, 32, 64), 128, 32, small=True, num_init_features=10).double()
    for name, model in (("plain", reference), ("cnnfast", models.dpn68().double()),
                        ("recompute_residual", models.dpn68(recompute_residual=True).double())):
        _, saved[name] = cnnfast.saved_tensor_bytes(model, x, exclude=list(model.parameters()))
    assert saved["cnnfast"] < 0.5 * saved["plain"], saved
    # Replayed, no block's incoming residual is kept: (depth - 1) residuals of bw channels per stage,
    # at 10x10, 5x5, 3x3 and 2x2 (40x40 input), batch 2, 8 bytes.
    residuals = sum((depth - 1) * bw * side * side for depth, bw, side in zip((3, 4, 12, 3), (64, 128, 256, 512),
                                                                               (10, 5, 3, 2)))
    assert saved["cnnfast"] - saved["recompute_residual"] == residuals * 2 * 8, saved


def test_nothing_is_kept_without_autograd():
    model = models.DPN(**TINY_DPN).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        _, saved = cnnfast.saved_tensor_bytes(model, x)
    assert saved == 0


class _Stage(torch.nn.Module):
    def __init__(self, blocks, recompute_residual):
        super().__init__()
        self.blocks, self.recompute_residual = torch.nn.ModuleList(blocks), recompute_residual

    def forward(self, x):
        return dual_path_stage(list(self.blocks), x, self.recompute_residual)


@pytest.mark.skipif(not cnnfast.extension_loaded(), reason="cnnfast._C not built")
@pytest.mark.parametrize("recompute_residual", [False, True])
def test_stage_gradcheck_fp64(recompute_residual):
    """The shared-buffer stage's own backward (input and every parameter) against finite differences."""
    torch.manual_seed(0)
    stage = _Stage([DualPathBlock(6, 4, 4, 6, 2, 2, "proj"), DualPathBlock(12, 4, 4, 6, 2, 2, "normal")],
                   recompute_residual).double()
    names = [name for name, _ in stage.named_parameters()]

    def run(x, *params):
        return torch.func.functional_call(stage, dict(zip(names, params)), (x,))

    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in stage.parameters()]
    with cnnfast.backend("cpu"):
        _, saved = cnnfast.saved_tensor_bytes(stage, x)
        # fast_mode: finite differences along random directions, one Jacobian-vector product each.
        assert torch.autograd.gradcheck(run, (x, *params), fast_mode=True)
    with cnnfast.backend("reference"):  # block by block, through torch.nn's ops
        _, saved_block_by_block = cnnfast.saved_tensor_bytes(stage, x)
    assert saved < saved_block_by_block  # so the check above went through the stage's own backward


def test_stage_errors_name_the_problem():
    blocks = [DualPathBlock(16, 8, 8, 16, 4, 4, "proj"), DualPathBlock(28, 8, 8, 16, 4, 4, "normal")]
    with pytest.raises(ValueError, match="expected input with 16 channels, got 3"):
        dual_path_stage(blocks, torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="one 'proj' or 'down' block followed by 'normal' ones"):
        dual_path_stage(blocks[1:], torch.randn(2, 28, 8, 8))
    with pytest.raises(ValueError, match=r"block 1 takes 24 channels \(16 residual\), but block 0 gives 28"):
        dual_path_stage([blocks[0], DualPathBlock(24, 8, 8, 16, 4, 4, "normal")], torch.randn(2, 16, 8, 8))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        dual_path_stage(blocks, torch.randn(1, 16, 1, 1))
    with pytest.raises(TypeError, match="BatchNorm running_mean of block 1's c1x1_w must be torch.float64"):
        dual_path_stage(blocks, torch.randn(2, 16, 8, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="conv weight of block 1's c1x1_w must have input's dtype torch.float16"):
        dual_path_stage(blocks, torch.randn(2, 16, 8, 8, dtype=torch.float16))
    with pytest.raises(ValueError, match="block_type must be"):
        DualPathBlock(16, 8, 8, 16, 4, 4, "dense")
    with pytest.raises(ValueError, match="k_sec and inc_sec"):
        models.DPN(k_sec=(1, 2), inc_sec=(4,))


@pytest.mark.parametrize("size", [4, 8], ids=["at-the-input", "past-the-stride"])
def test_a_failed_step_counts_num_batches_tracked_where_torch_nn_does(size):
    # nn.BatchNorm2d counts the step before it checks: the plain blocks count every BatchNorm up to
    # the first that sees one value per channel, none after it.
    ours = models.DPN(**TINY_DPN)
    plain = models.DPN(**TINY_DPN, memory_efficient=False)
    plain.load_state_dict(ours.state_dict())
    for model in (ours, plain):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            model.train()(torch.randn(1, 3, size, size))
    counts = [{name: int(b) for name, b in model.named_buffers() if name.endswith("num_batches_tracked")}
              for model in (ours, plain)]
    assert counts[0] == counts[1] and 0 < sum(counts[1].values()) < len(counts[1])


def test_num_classes_zero_returns_pooled_features():
    model = models.DPN(**{**TINY_DPN, "num_classes": 0}).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)


def test_features_is_called_so_its_hooks_and_the_modules_added_to_it_run():
    # timm's forward_features is self.features(x): hooks on model.features (feature extraction)
    # fire, and modules a user appends run, while the stages keep their shared buffers.
    ours = randomise_batch_norms(models.DPN(**TINY_DPN).double())
    reference = reference_models.DPN(**TINY_DPN).double()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    seen = []
    for model in (ours, reference):
        model.features.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    torch.testing.assert_close(ours.eval()(x), reference.eval()(x))
    assert seen == [(2, ours.num_features, 2, 2)] * 2
    _, saved = cnnfast.saved_tensor_bytes(copy.deepcopy(ours).train(), x)
    assert saved == cnnfast.saved_tensor_bytes(models.DPN(**TINY_DPN).double(), x)[1]  # as without the hook
    extra = torch.nn.Conv2d(ours.num_features, 7, 1).double()
    for model in (ours, reference):
        model.features.add_module("extra", extra)
    torch.testing.assert_close(ours.forward_features(x), reference.features(x))
    assert ours.forward_features(x).shape == (2, 7, 2, 2)


def test_timms_head_methods_and_pooling():
    model = randomise_batch_norms(models.DPN(**TINY_DPN).double()).eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    features = model.forward_features(x)
    assert model.get_classifier() is model.classifier
    torch.testing.assert_close(model.forward_head(features), model(x))
    mean, peak = features.mean((2, 3)), features.amax((2, 3))
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), mean)
    for pool, pooled in (("avg", mean), ("max", peak), ("avgmax", (mean + peak) / 2),
                         ("catavgmax", torch.cat((mean, peak), 1))):
        model.reset_classifier(3, pool)
        assert model.classifier.in_channels == pooled.shape[1] and model.classifier.weight.dtype == torch.float64
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), pooled)
        torch.testing.assert_close(model(x), pooled @ model.classifier.weight.flatten(1).T + model.classifier.bias)
    model.reset_classifier(3, "")  # no pooling: the 1x1 classifier over every position
    torch.testing.assert_close(model(x), torch.nn.functional.conv2d(features, model.classifier.weight,
                                                                    model.classifier.bias))
    model.reset_classifier(0)
    assert model.num_classes == 0 and model.get_classifier() is model.classifier
    torch.testing.assert_close(model(x), mean)


def test_timms_constructor_arguments_in_timms_order():
    tiny = dict(TINY_DPN)
    positional = [tiny.pop(name) for name in ("k_sec", "inc_sec", "k_r", "groups", "num_classes")]
    # timm's: ..., num_classes, in_chans, output_stride, global_pool, small, num_init_features, b, drop_rate
    model = models.DPN(*positional, 3, 32, "avgmax", tiny.pop("small"), tiny.pop("num_init_features"), True, 0.25)
    assert not tiny and model.global_pool.pool_type == "avgmax" and model.b and model.drop_rate == 0.25
    assert state_dict_lines(model) == state_dict_lines(models.DPN(**TINY_DPN, b=True))
    with pytest.raises(ValueError, match="output_stride must be 32"):
        models.DPN(**TINY_DPN, output_stride=16)
    with pytest.raises(ValueError, match="global_pool must be one of .*got 'fast'"):
        models.DPN(**TINY_DPN, global_pool="fast")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(3, "fast")
    with pytest.raises(TypeError):  # cnnfast's own arguments are keyword-only: timm's next ones are not them
        models.DPN(*positional, 3, 32, "avg", True, 8, False, 0.0, "batchnorm2d")


# ---- weights ---------------------------------------------------------------------------------------

def test_headless_checkpoints_and_models_load_all_but_the_classifier(tmp_path):
    # timm's num_classes=0: a feature extractor without classifier parameters.
    tiny = {**TINY_DPN, "num_classes": 1000}
    path = tmp_path / "dpn.pth"
    source = models.DPN(**tiny)
    torch.save(source.state_dict(), path)
    with pytest.warns(UserWarning, match="classifier.*no parameters"):
        headless = models.dpn68(**{**tiny, "num_classes": 0}, weights=path)
    assert all(torch.equal(headless.state_dict()[k], v) for k, v in source.state_dict().items()
               if not k.startswith("classifier."))
    torch.save(headless.state_dict(), path)
    with pytest.warns(UserWarning, match="checkpoint's classifier \\(no parameters\\)"):
        models.dpn68(**tiny, weights=path)


def test_weights_argument_loads_strictly_and_other_num_classes_replaces_the_classifier(tmp_path):
    small = dict(k_sec=(1, 2, 1, 1), k_r=32, groups=4)  # dpn68b's structure, narrower and shallower
    source = randomise_batch_norms(models.dpn68b(**small))
    path = tmp_path / "dpn68b.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    same = models.dpn68b(weights=path, **small)
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(same.state_dict()[name], tensor, rtol=0, atol=0)
    source.eval(), same.eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(same(x), source(x), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="fresh initialisation"):
        other = models.dpn68b(num_classes=3, weights=path, **small)
    assert other.classifier.out_channels == 3
    for name, tensor in source.state_dict().items():
        if not name.startswith("classifier."):
            torch.testing.assert_close(other.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Missing key"):
        models.dpn68(weights=path, **small)  # dpn68b's c1x1_c1 / c1x1_c2 are not dpn68's c1x1_c.conv
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        models.dpn68(weights=tmp_path / "absent.pth")

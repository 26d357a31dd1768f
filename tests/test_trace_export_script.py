"""Deployment paths: torch.jit.trace and torch.export record cnnfast's modules and models with
their numbers; torch.onnx.export and torch.fx.symbolic_trace trace them as plain torch;
torch.jit.script, which cannot compile them, says so and names what works."""
import copy

import pytest
import torch

import cnnfast
from cnnfast import models, reference_models
from cnnfast.models.dpn import DPN
from helpers import TINY_DPN

# torch 2.13 deprecates TorchScript, and the tracer warns where the input checks read shapes.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")

TINY_DENSENET = dict(growth_rate=4, block_config=(2, 3), num_init_features=8, num_classes=5, small_inputs=True)

MODELS = {
    "densenet": lambda: models.DenseNet(**TINY_DENSENET),
    "dpn": lambda: DPN(**TINY_DPN),
    "resnet18": lambda: models.resnet18(num_classes=5),
    "alexnet_paper": lambda: models.alexnet_paper(num_classes=5),
}
INPUT_SIZE = {"alexnet_paper": 227}


def _model_and_input(name):
    torch.manual_seed(0)
    return MODELS[name](), torch.randn(2, 3, INPUT_SIZE.get(name, 32), INPUT_SIZE.get(name, 32))


@pytest.mark.parametrize("name", MODELS)
def test_traced_model_gives_the_eager_outputs_gradients_and_running_stats(name):
    model, x = _model_and_input(name)
    eager = copy.deepcopy(model).eval()
    traced = torch.jit.trace(copy.deepcopy(model).eval(), (x,), check_trace=False)
    torch.testing.assert_close(traced(x), eager(x))

    eager = copy.deepcopy(model)
    torch.manual_seed(1)  # the same dropout masks
    traced = torch.jit.trace(model, (x,), check_trace=False)
    torch.manual_seed(1)
    eager(x)  # the step tracing ran
    torch.manual_seed(2)
    out = traced(x)
    torch.manual_seed(2)
    expected = eager(x)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (key, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"{key}: {m}")
    for (key, b), c in zip(model.named_buffers(), eager.buffers()):
        torch.testing.assert_close(b, c, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name", ["densenet", "dpn"])
def test_exported_model_gives_the_eager_outputs(name):
    model, x = _model_and_input(name)
    model.eval()
    program = torch.export.export(model, (x,))
    # cnnfast's ops are in the program (torch.export is not torch.fx.symbolic_trace, below).
    assert any(str(node.target).startswith("cnnfast.") for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.parametrize("name", [*MODELS, "converted_resnet18"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_fx_symbolic_trace_records_the_torch_nn_model(name, training):
    """torch.fx.symbolic_trace (and what is built on it, as torchvision's create_feature_extractor)
    records cnnfast's modules as the torch.nn modules they stand for: a graph of torch's ops with
    the model's outputs and running statistics."""
    if name == "converted_resnet18":
        torch.manual_seed(0)
        model, x = cnnfast.convert(reference_models.resnet(18, num_classes=5))[0], torch.randn(2, 3, 32, 32)
    else:
        model, x = _model_and_input(name)
    model, x = model.double().train(training), x.double()
    graph_module = torch.fx.symbolic_trace(model)
    targets = {str(node.target) for node in graph_module.graph.nodes}
    assert not any("cnnfast" in target for target in targets), sorted(targets)
    eager, traced = copy.deepcopy(model), copy.deepcopy(graph_module)
    torch.manual_seed(1)  # the same dropout masks
    expected = eager(x)
    torch.manual_seed(1)
    torch.testing.assert_close(traced(x), expected, rtol=1e-9, atol=1e-10)
    state, traced_state = eager.state_dict(), traced.state_dict()
    assert state.keys() == traced_state.keys()
    for key, value in state.items():
        torch.testing.assert_close(traced_state[key], value, rtol=1e-9, atol=1e-10, msg=lambda m: f"{key}: {m}")


def test_fx_symbolic_trace_refuses_what_it_would_record_wrong():
    with pytest.raises(NotImplementedError, match="trace the model with nn.BatchNorm2d and nn.ReLU"):
        torch.fx.symbolic_trace(cnnfast.nn.BNAddReLU(4))
    # A unit marked by convert_sync_bn shares its batch statistics across ranks in training, which
    # its plain BatchNorm module, as recorded, would not.
    unit = cnnfast.nn.BNReLUConv2d(4, 4, 1)
    unit.process_group = "a process group"  # as convert_sync_bn marks it (no group is needed to trace)
    with pytest.raises(NotImplementedError, match="sharing batch statistics across ranks"):
        torch.fx.symbolic_trace(unit)
    torch.fx.symbolic_trace(unit.eval())  # evaluation shares nothing


@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_traces_standard_operators(name, monkeypatch):
    """ONNX has no cnnfast operators: while torch.onnx.export traces (both of its exporters ask
    torch.onnx.is_in_onnx_export), every op runs as plain torch, whose operators ONNX has. Checked
    here on the trace that the TorchScript exporter converts (the onnx package is not needed)."""
    model, x = _model_and_input(name)
    model.eval()
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert not any(kind.startswith("cnnfast::") for kind in kinds), sorted(kinds)
    assert "aten::_convolution" in kinds
    monkeypatch.undo()
    torch.testing.assert_close(traced(x), model(x))


MODULES = [
    lambda: cnnfast.nn.LocalResponseNorm(3),
    lambda: cnnfast.nn.MaxPool2d(3, 2),
    lambda: cnnfast.nn.ReLULRNMaxPool2d(3, 3, 2),
    lambda: cnnfast.nn.BNReLUConv2d(4, 4, 3, padding=1),
    lambda: cnnfast.nn.BNAddReLU(4),
    lambda: cnnfast.nn.DenseBlock(2, 4, 2, 2),
    lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), cnnfast.nn.MaxPool2d(2)),
    lambda: models.resnet18(num_classes=5),
]


@pytest.mark.parametrize("make", MODULES)
def test_script_is_refused_naming_the_module_and_what_works(make):
    module = make()
    with pytest.raises(RuntimeError, match=r"torch\.jit\.script: cnnfast\.nn\.\w+\.\w+ cannot be compiled by "
                                           r"TorchScript.*torch\.jit\.trace, torch\.export\.export"):
        torch.jit.script(module)

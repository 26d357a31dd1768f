"""Writes tests/fixtures/timm_dpn_state_dicts.json from timm's own timm/models/dpn.py.

    pip download --no-deps timm==1.0.31 -d /tmp/timmdl
    unzip /tmp/timmdl/timm-1.0.31-py3-none-any.whl -d /tmp/timm_src
    python tools/make_timm_dpn_fixture.py /tmp/timm_src

timm is imported from that folder, not installed; the third-party packages it imports but DPN does
not use (torchvision, huggingface_hub, safetensors) are stubbed, so the model code run is timm's.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STUBBED = ("torchvision", "huggingface_hub", "safetensors")
NAMES = ["dpn68", "dpn68b", "dpn92", "dpn98", "dpn107", "dpn131"]
FULL_LISTS = ("dpn68", "dpn68b")  # the others by count and hash


class _Anything(type):
    """Any attribute of a stubbed package: a class that can be called and subclassed."""

    def __getattr__(cls, name):
        return _Anything(name, (object,), {})

    def __call__(cls, *args, **kwargs):
        return _Anything("stub", (object,), {})


class _StubModule(types.ModuleType):
    __path__ = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (object,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timm_src", help="folder holding the unzipped timm wheel (its 'timm' package)")
    args = parser.parse_args()
    sys.meta_path.insert(0, _StubFinder())
    sys.path.insert(0, args.timm_src)
    sys.path.insert(0, str(ROOT / "tests"))
    import timm
    from timm.models import dpn
    from dpn_fixture_weights import deterministic_input, deterministic_state

    out = {"source": f"timm {timm.__version__}, timm/models/dpn.py: <name>().state_dict(), in order, as "
                     f"'key [shape]' lines; 'parameters': sum of numel over parameters(); 'outputs': "
                     f"<name>(num_classes=10).double() loaded with tests/dpn_fixture_weights.py's "
                     f"deterministic_state, on its deterministic_input (2x3x40x40), in eval and in train mode (one "
                     f"forward each, eval first)"}
    for name in NAMES:
        model = getattr(dpn, name)()
        lines = [f"{k} {list(v.shape)}" for k, v in model.state_dict().items()]
        entry = {"count": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
                 "parameters": sum(p.numel() for p in model.parameters())}
        if name in FULL_LISTS:
            entry["keys_and_shapes"] = lines
        out[name] = entry
    out["outputs"] = {}
    for name in FULL_LISTS:
        model = getattr(dpn, name)(num_classes=10).double()
        model.load_state_dict(deterministic_state(model.state_dict()), strict=True)
        x = deterministic_input()
        results = {}
        for mode in ("eval", "train"):
            model.train(mode == "train")
            with torch.no_grad():
                results[mode] = model(x).tolist()
        out["outputs"][name] = results
    path = ROOT / "tests" / "fixtures" / "timm_dpn_state_dicts.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

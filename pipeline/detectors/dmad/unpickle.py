"""Run only as ``python -m pipeline.detectors.dmad.unpickle SOURCE OUT`` (see :mod:`pipeline.detectors.dmad.importer`):
unpickle a released DMAD model in this separate process and write its state_dict as plain tensors to ``OUT``.

The official classes are replaced by empty ``nn.Module`` stand-ins of the same names, so none of the official code
runs; any global outside those modules, ``torch.nn`` modules and torch's tensor rebuilding is refused.
"""

from __future__ import annotations

import pickle
import re
import sys
import types
from typing import Any

import torch
from torch import nn

OFFICIAL_MODULE = re.compile(r"^model\.final_future_prediction_(ped2|avenue|shanghai)$")
ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
           ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
           ("torch", "Size"), ("builtins", "set"), ("__builtin__", "set")}  # protocol 2 names it __builtin__


def _stand_in(module: str, name: str) -> type:
    return types.new_class(name, (nn.Module,), exec_body=lambda ns: ns.update({"__module__": module}))


class Unpickler(pickle.Unpickler):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stand_ins: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if OFFICIAL_MODULE.match(module):
            return self.stand_ins.setdefault((module, name), _stand_in(module, name))
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        if module.startswith("torch.nn.modules.") or module == "torch.nn.parameter":
            found = super().find_class(module, name)
            if isinstance(found, type) and issubclass(found, (nn.Module, nn.Parameter)):
                return found
        if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}: not part of a DMAD model")


class _PickleModule:
    """What ``torch.load(pickle_module=...)`` needs: our Unpickler, and ``load`` for legacy files."""

    Unpickler = Unpickler
    __name__ = "dmad_restricted_pickle"

    @staticmethod
    def load(f: Any, **kwargs: Any) -> Any:
        return Unpickler(f, **kwargs).load()


def main(source: str, out: str) -> None:
    obj = torch.load(source, map_location="cpu", weights_only=False, pickle_module=_PickleModule)
    if isinstance(obj, nn.Module):
        match = OFFICIAL_MODULE.match(type(obj).__module__)
        if not match or type(obj).__name__ != "convAE":
            raise ValueError(f"{type(obj).__module__}.{type(obj).__name__} is not an official DMAD video model")
        layout, state = match.group(1), obj.state_dict()
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        layout, state = None, obj
    else:
        raise ValueError(f"expected a pickled convAE or its state_dict, got {type(obj).__name__}")
    torch.save({"layout": layout, "state": {k: v.detach().clone() for k, v in state.items()}}, out)


if __name__ == "__main__":
    main(*sys.argv[1:3])

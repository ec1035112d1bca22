"""A ``pickle_module`` for ``torch.load`` that rebuilds tensors and plain containers and imports nothing.

Lightning checkpoints cannot be read with ``weights_only=True`` when their hyper-parameters hold a class
(SGMSE+ stores ``data_module_cls = sgmse.data_module.SpecsDataModule``), and plain ``torch.load`` would
import that class and run whatever a file's ``__reduce__`` names. Here every global the file names is
looked up in a fixed table (tensors, storages, dtypes, ``torch.Size``, ``OrderedDict`` and builtin
containers and numbers); any other global becomes an inert ``UnresolvedGlobal`` class that may be stored
as a value but raises ``pickle.UnpicklingError`` naming the global the moment anything calls or
instantiates it. Nothing is imported. Lightning's ``AttributeDict`` (a ``dict`` subclass) loads as a dict.

    obj = restricted_load("model.ckpt")   # or torch.load(..., weights_only=False, pickle_module=RESTRICTED_PICKLE)
"""
from __future__ import annotations

import codecs
import pickle
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning", "lightning_fabric")
_BUILTINS = (dict, list, tuple, set, frozenset, int, float, complex, bool, str, bytes, bytearray, slice)

SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles spell bytes as encode(str, "latin1")
    **{("builtins", t.__name__): t for t in _BUILTINS},
}


class RefusedGlobal(pickle.UnpicklingError):
    """A checkpoint asked to call or instantiate a global that this loader does not rebuild."""


class _UnresolvedMeta(type):
    def __call__(cls, *args, **kwargs):
        cls._refuse()

    def __repr__(cls):
        return f"<unresolved global {cls.global_name}>"


class UnresolvedGlobal(metaclass=_UnresolvedMeta):
    """Stands in for a global the file names but this loader will not import (compare ``global_name``)."""

    global_name = "?"

    def __new__(cls, *args, **kwargs):  # pickle's NEWOBJ calls __new__ without going through the metaclass
        cls._refuse()

    @classmethod
    def _refuse(cls):
        raise RefusedGlobal(
            f"the file asks to call or instantiate {cls.global_name}; this loader never imports or runs "
            f"code named in a checkpoint (it rebuilds only tensors and plain containers)")


def unresolved(module: str, name: str) -> type:
    """The inert placeholder class for ``module.name``."""
    return _UnresolvedMeta(name, (UnresolvedGlobal,), {"global_name": f"{module}.{name}", "__module__": __name__})


def is_unresolved(value) -> bool:
    return isinstance(value, type) and issubclass(value, UnresolvedGlobal)


def inert(value):
    """``value`` with every placeholder replaced by its ``"module.name"`` string (containers recursively)."""
    if is_unresolved(value):
        return value.global_name
    if isinstance(value, dict):
        return {inert(k): inert(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return type(value)(inert(v) for v in value)
    return value


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # protocol-2 files spell some globals the Python 2 way (``__builtin__``): rename as pickle does
        if (module, name) in NAME_MAPPING:
            module, name = NAME_MAPPING[(module, name)]
        elif module in IMPORT_MAPPING:
            module = IMPORT_MAPPING[module]
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name == "AttributeDict" and module.split(".")[0] in LIGHTNING_PACKAGES:
            return dict
        return unresolved(module, name)


def _load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


RESTRICTED_PICKLE = types.ModuleType("revsde_restricted_pickle")
RESTRICTED_PICKLE.Unpickler = RestrictedUnpickler
RESTRICTED_PICKLE.load = _load
RESTRICTED_PICKLE.__doc__ = "torch.load(pickle_module=...) that never imports a pickled global"


def restricted_load(path, map_location="cpu"):
    """``torch.load`` of ``path`` with ``RESTRICTED_PICKLE``; zip files are memory-mapped (a 1.3 GB Lightning
    file then costs only the tensors that are used). Wrap it in ``model_files.reading`` for one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} is not a file")
    return torch.load(path, map_location=map_location, weights_only=False, pickle_module=RESTRICTED_PICKLE,
                      mmap=zipfile.is_zipfile(path))

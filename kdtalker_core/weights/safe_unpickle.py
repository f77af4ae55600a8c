"""A restricted pickle module for ``torch.load(pickle_module=...)`` that never runs unknown code.

``torch.load(path, weights_only=True)`` refuses any checkpoint that pickles a class it does not know,
for instance the omegaconf ``DictConfig`` that KDTalker's training checkpoint keeps under ``cfg``.
This module is the fallback for such files. Its :class:`Unpickler` resolves a global name as follows:

* tensor and storage rebuild functions, dtypes, ``torch.Size``/``torch.device``, ``OrderedDict`` and
  the builtin containers/scalars are returned as themselves (the same set ``weights_only`` trusts;
  rebuild functions get their backward hooks dropped);
* names from modules that can reach the operating system or the interpreter (``os``, ``subprocess``,
  ``builtins.eval``/``getattr``, ``importlib``, ``pickle``, ...) make the load fail with
  :class:`UnsafePickleError` before anything is called;
* every other name becomes an inert :class:`Placeholder` subclass. Constructing it only records
  its arguments, state, items and list entries; it has no ``__call__`` and runs nothing.

The pickle stream therefore cannot call any function outside the allow-list. Use it as
``torch.load(path, map_location="cpu", weights_only=False, pickle_module=kdtalker_core.weights.safe_unpickle)``
(that is what :func:`kdtalker_core.weights.read_torch_file` does); this module itself needs
``Unpickler`` and ``load`` for torch's zip and legacy formats.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Placeholder", "UnsafePickleError", "Unpickler", "load", "loads", "placeholder_names"]

#: Top-level modules whose globals are never resolved, not even into placeholders: a pickle naming
#: them is trying to run code (``os.system``, ``subprocess.Popen``, ``builtins.exec`` ...).
DENIED_MODULES: frozenset[str] = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "importlib", "runpy",
    "pickle", "_pickle", "copyreg", "shutil", "socket", "ctypes", "pty", "code", "codeop", "marshal",
    "types", "functools", "operator", "webbrowser", "multiprocessing", "signal", "asyncio", "urllib",
    "http", "inspect", "pdb", "bdb", "timeit", "trace", "cProfile", "profile", "zipimport", "pkgutil",
    "site", "dill", "cloudpickle", "joblib", "shelve",
})

#: Builtins that may be resolved (containers and scalars only; never eval/exec/getattr/__import__).
_SAFE_BUILTINS: dict[str, Any] = {
    t.__name__: t
    for t in (dict, list, tuple, set, frozenset, int, float, complex, bool, str, bytes, bytearray, slice)
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that could run code (e.g. ``os.system``); nothing was executed."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(
            f"the file's pickle refers to '{module}.{name}', which could execute code when loaded; "
            "it was refused and nothing was run"
        )
        self.module = module
        self.name = name


class Placeholder:
    """Inert stand-in for an instance of a class this loader does not trust.

    Subclasses are created on the fly, one per pickled global (``placeholder_module`` and
    ``placeholder_name`` say which). Every protocol hook only stores data: ``args``/``kwargs`` from
    construction, ``state`` from BUILD, ``items`` from SETITEMS, ``entries`` from APPENDS.
    """

    placeholder_module: str = ""
    placeholder_name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, entries=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # construction already recorded in __new__
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["entries"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["entries"].extend(values)

    def __repr__(self) -> str:
        return f"<placeholder {self.placeholder_module}.{self.placeholder_name}>"


def _placeholder_class(module: str, name: str) -> type[Placeholder]:
    return type(
        f"Placeholder[{module}.{name}]",
        (Placeholder,),
        {"placeholder_module": module, "placeholder_name": name, "__module__": __name__},
    )


def _without_hooks(fn: Callable[..., Any], hooks_index: int) -> Callable[..., Any]:
    """Wrap a tensor rebuild function so that pickled backward hooks are replaced by an empty dict."""

    def rebuild(*args: Any) -> Any:
        args_list = list(args)
        if len(args_list) > hooks_index:
            args_list[hooks_index] = OrderedDict()
        return fn(*args_list)

    rebuild.__name__ = fn.__name__
    return rebuild


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """Guarded ``torch._tensor._rebuild_from_type_v2``: plain tensors/parameters from trusted rebuilds."""
    if new_type not in (torch.Tensor, torch.nn.Parameter) or func not in _TRUSTED_CALLABLES:
        raise pickle.UnpicklingError(
            f"refusing tensor subclass rebuild {getattr(new_type, '__name__', new_type)!r}"
        )
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _codecs_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to the text codecs pickle protocol 2 uses for ``bytes``."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return text.encode(encoding, errors)


def _build_allowed() -> dict[str, Any]:
    allowed: dict[str, Any] = {
        "collections.OrderedDict": OrderedDict,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.Tensor": torch.Tensor,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "_codecs.encode": _codecs_encode,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    }
    try:  # the set torch itself trusts for weights_only=True (private API: optional)
        from torch._weights_only_unpickler import _get_allowed_globals

        for key, value in _get_allowed_globals().items():
            allowed.setdefault(key, value)
    except Exception:  # noqa: BLE001 - fall back to the explicit list below
        pass
    for name in dir(torch):
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            allowed.setdefault(f"torch.{name}", obj)
    for name in ("_rebuild_tensor", "_rebuild_meta_tensor_no_storage", "_rebuild_device_tensor_from_numpy"):
        if hasattr(torch._utils, name):
            allowed.setdefault(f"torch._utils.{name}", getattr(torch._utils, name))
    hooks_at = {"_rebuild_tensor_v2": 5, "_rebuild_tensor_v3": 5, "_rebuild_parameter": 2,
                "_rebuild_parameter_with_state": 2}
    for name, index in hooks_at.items():
        if hasattr(torch._utils, name):
            allowed[f"torch._utils.{name}"] = _without_hooks(getattr(torch._utils, name), index)
    allowed["torch._tensor._rebuild_from_type_v2"] = _rebuild_from_type_v2
    allowed["_codecs.encode"] = _codecs_encode
    for key, value in _SAFE_BUILTINS.items():
        allowed[f"builtins.{key}"] = value
    return allowed


_ALLOWED: dict[str, Any] = _build_allowed()
_TRUSTED_CALLABLES: list[Any] = [v for k, v in _ALLOWED.items() if k.startswith("torch._utils.")]


def _storage_class(module: str, name: str) -> Any | None:
    """torch legacy storage classes (``torch.FloatStorage`` ...) as torch's loader expects them."""
    if module == "torch" and name.endswith("Storage"):
        try:
            return torch.serialization.StorageType(name)
        except (KeyError, AttributeError):
            return None
    return None


class Unpickler(pickle.Unpickler):
    """Restricted unpickler: allow-listed globals, denied dangerous modules, placeholders otherwise.

    ``placeholders`` lists the ``module.name`` strings that were replaced by :class:`Placeholder`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.placeholders: list[str] = []

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - see class docstring
        if (module, name) in _compat_pickle.NAME_MAPPING:  # python 2 names (protocol <= 2)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = f"{module}.{name}"
        if key in _ALLOWED:
            return _ALLOWED[key]
        storage = _storage_class(module, name)
        if storage is not None:
            return storage
        if module.split(".")[0] in DENIED_MODULES or name.startswith("__"):
            raise UnsafePickleError(module, name)
        self.placeholders.append(key)
        return _placeholder_class(module, name)


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` with the restricted :class:`Unpickler` (torch's legacy format calls this)."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    """``pickle.loads`` with the restricted :class:`Unpickler`."""
    return Unpickler(io.BytesIO(data), **kwargs).load()


def placeholder_names(obj: Any, _seen: set[int] | None = None) -> set[str]:
    """The ``module.name`` of every :class:`Placeholder` inside nested dicts/lists/tuples of ``obj``."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return set()
    seen.add(id(obj))
    found: set[str] = set()
    if isinstance(obj, Placeholder):
        found.add(f"{obj.placeholder_module}.{obj.placeholder_name}")
        for part in (obj.args, obj.kwargs, obj.state, obj.items, obj.entries):
            found |= placeholder_names(part, seen)
    elif isinstance(obj, dict):
        for value in obj.values():
            found |= placeholder_names(value, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            found |= placeholder_names(value, seen)
    return found

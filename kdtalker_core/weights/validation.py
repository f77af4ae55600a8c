"""Key / shape checks of state dicts, and the wording that names what was expected and found.

Every failure is a :class:`~kdtalker_core.errors.ModelFileError` naming the file, the weights it
should hold, and a sample of the keys expected and found, so a wrong or outdated file is obvious.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..errors import ModelFileError

PathLike = str | os.PathLike


def short(exc: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, cut after ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def sample_keys(keys: Iterable[str], n: int = 5) -> str:
    """The first ``n`` keys quoted, then how many there are in all."""
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)} in all)"


def describe(obj: Any) -> str:
    """What an unpickled object is, for messages ("a dict with keys [...]" or its class)."""
    if isinstance(obj, Mapping):
        return f"a dict with keys {sample_keys(map(str, obj.keys()))}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _shape_dtype(value: Any) -> tuple[tuple[int, ...], str | None]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), str(value.dtype).replace("torch.", "")
    if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], int) and (
            value[1] is None or isinstance(value[1], (str, torch.dtype))):
        dtype = value[1]
        return tuple(int(s) for s in value[0]), (None if dtype is None else str(dtype).replace("torch.", ""))
    return tuple(int(s) for s in value), None


def layout_problems(
    found: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    check_order: bool = False,
    limit: int = 8,
) -> list[str]:
    """Differences between two key -> shape layouts, most telling first ([] when they agree).

    Values are shapes (tuples, ``torch.Size``), tensors, or ``(shape, dtype)`` pairs; when both
    sides give a dtype it is compared too. ``check_order`` also requires the same key order.
    """
    problems: list[str] = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        problems.append(f"missing keys {sample_keys(missing, limit)}")
    if unexpected:
        problems.append(f"unexpected keys {sample_keys(unexpected, limit)}")
    for key in expected:
        if key not in found:
            continue
        e_shape, e_dtype = _shape_dtype(expected[key])
        f_shape, f_dtype = _shape_dtype(found[key])
        if e_shape != f_shape:
            problems.append(f"shape mismatch for {key!r}: expected {e_shape}, found {f_shape}")
        elif e_dtype is not None and f_dtype is not None and e_dtype != f_dtype:
            problems.append(f"dtype mismatch for {key!r}: expected {e_dtype}, found {f_dtype}")
        if len(problems) >= limit:
            break
    if check_order and not missing and not unexpected:
        for i, (fk, ek) in enumerate(zip(found, expected)):
            if fk != ek:
                problems.append(f"key order differs at position {i}: expected {ek!r}, found {fk!r}")
                break
    return problems


def validate_state_dict(
    sd: Mapping[str, Any],
    expected: Mapping[str, Sequence[int]],
    *,
    file: PathLike | None = None,
    what: str = "model",
) -> None:
    """Raise :class:`ModelFileError` unless ``sd`` has exactly the keys and shapes of ``expected``.

    ``expected`` maps key -> shape, normally ``{k: tuple(v.shape) for k, v in module.state_dict().items()}``.
    When fewer than half of the expected keys are present the file is reported as the wrong model
    (with a sample of the keys expected and found); otherwise missing keys, unexpected keys and the
    first shape mismatches are named. dtypes are not checked (loading casts them).
    """
    where = str(file) if file is not None else "the checkpoint"
    exp_keys = list(expected)
    common = sum(1 for k in exp_keys if k in sd)
    if exp_keys and common < max(1, len(exp_keys) // 2):
        raise ModelFileError(
            f"{where} does not contain the {what} weights: expected keys like {sample_keys(exp_keys)}, "
            f"found {sample_keys(list(sd))}. Check that the right file is in this place."
        )
    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else v for k, v in sd.items()}
    problems = layout_problems(shapes, {k: tuple(v) for k, v in expected.items()})
    if problems:
        raise ModelFileError(
            f"{where} does not match the {what}: " + "; ".join(problems)
            + ". The file may come from another version or another model: download the official file."
        )

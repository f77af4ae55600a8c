"""Batch job files: JSONL or CSV lines -> :class:`Job` (paths, output name, options), with errors
that name the file and line instead of exceptions (a bad line fails alone; see :mod:`.batch`)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, KDTalkerError
from .options import DEFAULTS, GenerateOptions, ModelOptions

#: Keys every job has.
JOB_KEYS: tuple[str, ...] = ("image", "audio", "out")
#: CLI spellings of options accepted as job keys: name -> (option field, negate the value).
OPTION_ALIASES: dict[str, tuple[str, bool]] = {
    "max_seconds": ("duration_seconds", False),
    "no_paste_back": ("paste_back", True),
}
#: Options that name files: relative ones are relative to the jobs file, like ``image`` and ``audio``.
PATH_OPTIONS: tuple[str, ...] = ("pose_video",)
#: Model settings are per worker, not per job: a job naming one gets this hint.
MODEL_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelOptions)) + ("models_dir",)


@dataclass(frozen=True)
class Job:
    """One line of a jobs file: ``number`` (the line, from 1), ``image``/``audio`` paths, ``out``
    (relative to the output folder, as written), ``options`` (the batch defaults + the line's
    overrides). ``error`` is set, and the rest may be None, when the line is not a valid job."""

    number: int
    out: str | None
    image: Path | None = None
    audio: Path | None = None
    options: GenerateOptions | None = None
    error: str | None = None


_OPTION_FIELDS = {f.name: f for f in dataclasses.fields(GenerateOptions)}
_OPTION_TYPES = typing.get_type_hints(GenerateOptions)


def _coerce(name: str, value: Any) -> Any:
    """A JSON value or a CSV cell -> the type of option ``name`` (InputError when it does not fit)."""
    kind = _OPTION_TYPES[name]
    allows_none = type(None) in typing.get_args(kind)
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if allows_none:
            return None
        raise InputError(f"{name} needs a value")
    text = value.strip() if isinstance(value, str) else value
    try:
        if base is bool:
            if isinstance(text, bool):
                return text
            flag = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
            return flag[str(text).lower()]
        if base is int:
            number = float(text)
            if isinstance(text, bool) or not number.is_integer():
                raise ValueError
            return int(number)
        if base is float:
            if isinstance(text, bool):
                raise ValueError
            return float(text)
        return str(text)
    except (KeyError, ValueError, TypeError):
        raise InputError(f"{name} must be {getattr(base, '__name__', base)}, got {value!r}") from None


def make_job(number: int, values: Mapping[str, Any], *, base_dir: Path, defaults: GenerateOptions = DEFAULTS) -> Job:
    """A :class:`Job` from one line's keys; problems become ``Job.error`` (never raised)."""
    out = values.get("out")
    out = str(out).strip() if out not in (None, "") else None
    try:
        missing = [k for k in JOB_KEYS if values.get(k) in (None, "")]
        if missing:
            raise InputError(f"missing {', '.join(missing)} (every job needs {', '.join(JOB_KEYS)})")
        overrides: dict[str, Any] = {}
        for key, value in values.items():
            if key in JOB_KEYS:
                continue
            name, negate = OPTION_ALIASES.get(key, (key, False))
            if name in MODEL_KEYS:
                raise InputError(f"{key} is a batch setting (--{key.replace('_', '-')}), not a job key: models "
                                 "load once per worker")
            if name not in _OPTION_FIELDS:
                known = ", ".join([*JOB_KEYS, *_OPTION_FIELDS, *OPTION_ALIASES])
                raise InputError(f"unknown key {key!r} (known: {known})")
            coerced = _coerce(name, value)
            if name in PATH_OPTIONS and coerced is not None:
                coerced = str(base_dir / Path(coerced).expanduser())
            overrides[name] = (not coerced) if negate else coerced
        options = defaults.replace(**overrides)
        out_path = Path(out)
        if out_path.suffix.lower() != ".mp4":
            raise InputError(f"out must be an .mp4 name, got {out!r}")
        if out_path.is_absolute() or ".." in out_path.parts:
            raise InputError(f"out must be a name inside the output folder, got {out!r}")
        image, audio = (Path(str(values[k])).expanduser() for k in ("image", "audio"))
        return Job(number, out, base_dir / image, base_dir / audio, options)
    except KDTalkerError as exc:
        return Job(number, out, error=one_line(exc))


def read_jobs(path: str | Path, defaults: GenerateOptions = DEFAULTS) -> list[Job]:
    """Parse a JSONL (``.jsonl``/``.ndjson``/``.json``) or CSV (``.csv``; others: sniffed) jobs file.

    Blank lines and JSONL lines starting with ``#`` are skipped. Bad lines become jobs with an
    ``error`` naming the file and line; a missing or empty file raises InputError. Two jobs with the
    same ``out``: the later one is an error.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read the jobs file {path}: {exc.strerror or exc}") from None
    base_dir = path.parent
    suffix = path.suffix.lower()
    is_jsonl = suffix in (".jsonl", ".ndjson", ".json") or (suffix != ".csv" and text.lstrip().startswith("{"))
    rows = _jsonl_rows(text) if is_jsonl else _csv_rows(text)
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for number, values in rows:
        if isinstance(values, str):
            job = Job(number, None, error=values)
        else:
            job = make_job(number, values, base_dir=base_dir, defaults=defaults)
        if job.error is None and job.out is not None:
            key = os.path.normcase(os.path.normpath(job.out))
            if key in seen:
                job = dataclasses.replace(job, error=f"out {job.out!r} is also the output of line {seen[key]}")
            else:
                seen[key] = number
        if job.error is not None:
            job = dataclasses.replace(job, error=f"{path.name}:{number}: {job.error}")
        jobs.append(job)
    if not jobs:
        raise InputError(f"no jobs in {path}: one JSON object a line (JSONL) or a CSV with a header "
                         f"row naming {', '.join(JOB_KEYS)}")
    return jobs


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not valid JSON ({exc.msg} at column {exc.colno})"
            continue
        yield number, values if isinstance(values, dict) else "a job must be a JSON object {...}"


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    if not set(JOB_KEYS) <= set(header):
        raise InputError(f"the CSV header must name {', '.join(JOB_KEYS)} (got {', '.join(header) or 'nothing'})")
    reader.fieldnames = header
    for row in reader:
        if None in row:
            yield reader.line_num, f"more cells than the header has ({len(header)})"
            continue
        cells = {k: v for k, v in row.items() if v is not None and v.strip() != ""}
        if cells:
            yield reader.line_num, cells


def one_line(exc: BaseException) -> str:
    """An error as one line: KDTalker errors by their message, anything else with its type."""
    text = " | ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text if isinstance(exc, KDTalkerError) else f"{type(exc).__name__}: {text}"

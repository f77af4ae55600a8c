"""Stand-in for ComfyUI's ``folder_paths`` (model folders, input/output/temp directories)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

_root = os.environ.get("COMFY_STUB_ROOT") or tempfile.mkdtemp(prefix="comfy_stub_")
base_path = _root
models_dir = os.path.join(base_path, "models")
output_directory = os.path.join(base_path, "output")
temp_directory = os.path.join(base_path, "temp")
input_directory = os.path.join(base_path, "input")

# folder name -> ([paths], {extensions}); an empty extension set lists every file.
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {
    "checkpoints": ([os.path.join(models_dir, "checkpoints")], set(supported_pt_extensions)),
}


def set_base_path(path: str) -> None:
    """Test helper: move every directory under ``path`` and forget registered model folders."""
    global base_path, models_dir, output_directory, temp_directory, input_directory
    base_path = path
    models_dir = os.path.join(path, "models")
    output_directory = os.path.join(path, "output")
    temp_directory = os.path.join(path, "temp")
    input_directory = os.path.join(path, "input")
    folder_names_and_paths.clear()
    folder_names_and_paths["checkpoints"] = ([os.path.join(models_dir, "checkpoints")],
                                             set(supported_pt_extensions))


def map_legacy(folder_name: str) -> str:
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)


def get_output_directory() -> str:
    return output_directory


def get_temp_directory() -> str:
    return temp_directory


def get_input_directory() -> str:
    return input_directory


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    """Same behaviour as ComfyUI: a new folder name gets an empty extension set (all files)."""
    folder_name = map_legacy(folder_name)
    if folder_name in folder_names_and_paths:
        paths, _exts = folder_names_and_paths[folder_name]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[map_legacy(folder_name)][0][:]


def filter_files_extensions(files: Collection[str], extensions: Collection[str]) -> list[str]:
    return sorted(f for f in files if os.path.splitext(f)[-1].lower() in extensions or len(extensions) == 0)


def _recursive_search(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    out = []
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True):
        subdirs[:] = [d for d in subdirs if d != ".git"]
        out.extend(os.path.relpath(os.path.join(dirpath, f), directory) for f in filenames)
    return out


def get_filename_list(folder_name: str) -> list[str]:
    """Relative paths of every matching file under every path of ``folder_name`` (no cache here)."""
    paths, exts = folder_names_and_paths[map_legacy(folder_name)]
    found: set[str] = set()
    for p in paths:
        found.update(filter_files_extensions(_recursive_search(p), exts))
    return sorted(found)


def get_full_path(folder_name: str, filename: str) -> str | None:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for base in folder_names_and_paths[folder_name][0]:
        full = os.path.join(base, filename)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full


def annotated_filepath(name: str) -> tuple[str, str | None]:
    for tag, getter in (("[output]", get_output_directory), ("[input]", get_input_directory),
                        ("[temp]", get_temp_directory)):
        if name.endswith(tag):
            return name[: -len(tag) - 1], getter()
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    name, base = annotated_filepath(name)
    base = base or default_dir or get_input_directory()
    path = os.path.abspath(os.path.join(base, name))
    if os.path.commonpath([os.path.abspath(base), path]) != os.path.abspath(base):
        raise ValueError(f"Invalid file path: {name!r}")
    return path


def exists_annotated_filepath(name: str) -> bool:
    try:
        return os.path.exists(get_annotated_filepath(name))
    except ValueError:
        return False


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0,
                        image_height: int = 0) -> tuple[str, str, int, str, str]:
    """(full_output_folder, filename, counter, subfolder, filename_prefix), like ComfyUI."""
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    folder = os.path.join(output_dir, subfolder)
    os.makedirs(folder, exist_ok=True)
    counter = 1
    for existing in os.listdir(folder):
        if existing.startswith(filename + "_"):
            digits = existing[len(filename) + 1:].split(".")[0].split("_")[0]
            if digits.isdigit():
                counter = max(counter, int(digits) + 1)
    return folder, filename, counter, subfolder, filename_prefix

"""Read a portrait photo as people have it: phone JPEGs, CMYK prints, 16-bit scans, PNGs with alpha.

One entry point, :func:`read_image`, turns a file path, raw bytes, a Pillow image or an array into
the (H, W, 3) uint8 RGB array the rest of the library takes:

* the EXIF orientation tag is applied (phones store portraits sideways and set the tag);
* CMYK and YCCK JPEGs (Adobe, print workflows) are converted to RGB, through the embedded ICC
  profile when there is one;
* 16-bit and 32-bit grayscale (PNG, TIFF) and float TIFFs are scaled to 8 bits by their bit depth;
* palette, grayscale, 1-bit and alpha images become RGB; alpha is dropped the way Pillow's
  ``convert("RGB")`` drops it (the official KDTalker preprocessing), the stored colours are kept;
* animated or multi-page files give their first frame.

Every refusal is an :class:`~kdtalker_core.errors.InputError` whose message names the file.
Decoding uses Pillow (installed with imageio, already a requirement).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

#: Formats named in refusals (what the reader is tested on).
SUPPORTED = "JPEG, PNG, WebP, TIFF, BMP or GIF"


def read_image(source: Any, name: str | None = None) -> np.ndarray:
    """A photo -> C-contiguous (H, W, 3) uint8 RGB array.

    Args:
        source: a path (str / Path), encoded file bytes, a ``PIL.Image.Image``, or an array / tensor
            (H, W), (H, W, C) or (1, H, W, C) with C in 1, 3, 4; uint8, uint16 (scaled by 1/257),
            bool, or float in [0, 1].
        name: how errors refer to the input (default: the path, or "image").

    Raises:
        InputError: missing, unreadable, truncated or unsupported file, or a bad array; the message
            names the file (or ``name``) and says what to do.
    """
    from PIL import Image

    if isinstance(source, (str, Path)):
        path = Path(source)
        label = name or str(path)
        if not path.is_file():
            raise InputError(f"Image file not found: {label}. Check the path (or pick the file again).")
        return _decode(lambda: Image.open(path), label)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _decode(lambda: Image.open(io.BytesIO(data)), name or "image")
    if isinstance(source, Image.Image):
        return _decode(lambda: source, name or "image")
    return _array_to_rgb(source, name or "image")


def _decode(opener, label: str) -> np.ndarray:
    """Open, load, orient and convert one image; every decoder failure becomes an InputError."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            # Pillow warns (DecompressionBombWarning) between 89 and 179 Mpx and refuses above; the
            # refusal is reported below, the warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = opener()
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _pil_to_rgb(img, label)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"Cannot read image {label}: it is too large ({exc}). Downscale it below 100 "
                         "megapixels first.") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise InputError(f"Cannot read image {label}: {type(exc).__name__}: {exc}. The file is damaged or "
                         f"not a picture; save the photo again as {SUPPORTED}.") from exc


def _pil_to_rgb(img, label: str) -> np.ndarray:
    """A loaded Pillow image of any mode -> (H, W, 3) uint8."""
    mode = img.mode
    if img.width < 1 or img.height < 1:
        raise InputError(f"Image {label} is empty ({img.width}x{img.height} pixels). Use a real photo.")
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if mode == "CMYK":
        return np.ascontiguousarray(np.asarray(_cmyk_to_rgb(img), dtype=np.uint8))
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _gray_to_rgb(_high_depth_gray(img, label))
    if mode in ("P", "PA"):
        # Palette images: expand the palette (transparency is dropped with the alpha channel below).
        img = img.convert("RGBA" if (mode == "PA" or "transparency" in img.info) else "RGB")
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8)[..., :3])
    if mode in ("RGBA", "RGBa", "RGBX", "LA", "La", "L", "1", "YCbCr", "LAB", "HSV"):
        return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    try:
        return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    except Exception as exc:
        raise InputError(f"Cannot read image {label}: pixel format {mode!r} is not supported. Save it as "
                         f"8-bit RGB {SUPPORTED}.") from exc


def _cmyk_to_rgb(img):
    """CMYK (also decoded YCCK) -> RGB, through the embedded ICC profile when Pillow can use it."""
    from PIL import Image

    profile = img.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
        except Exception:  # no littlecms, or a broken profile: fall back to the plain formula
            pass
    rgb: Image.Image = img.convert("RGB")
    return rgb


def _high_depth_gray(img, label: str) -> np.ndarray:
    """16-bit / 32-bit integer or float grayscale -> (H, W) uint8 by the image's bit depth."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise InputError(f"Image {label} contains NaN or infinite pixels. Save it again as 8-bit.")
        top = 1.0 if float(arr.max(initial=0.0)) <= 1.0 else (255.0 if float(arr.max()) <= 255.0 else 65535.0)
        return np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
    arr = arr.astype(np.int64)
    peak = int(arr.max(initial=0))
    # Pillow opens 16-bit PNG/TIFF grayscale as I;16 or as I (32-bit): both hold 0..65535.
    top = 65535 if peak <= 65535 else 2**32 - 1
    return np.clip(np.rint(np.clip(arr, 0, None) * (255.0 / top)), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _array_to_rgb(source: Any, label: str) -> np.ndarray:
    """Arrays and tensors: uint16 is scaled by its bit depth here, the rest by :func:`face.to_rgb_uint8`."""
    import torch

    from .face import to_rgb_uint8

    arr = source
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu()
        if arr.dtype in (torch.float16, torch.bfloat16):
            arr = arr.float()
        elif arr.dtype == torch.uint16:
            arr = arr.to(torch.int32)
            arr = arr.numpy().astype(np.uint16)
        arr = np.asarray(arr)
    arr = np.asarray(arr)
    if arr.dtype == np.uint16:
        arr = np.rint(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    return to_rgb_uint8(arr, label)

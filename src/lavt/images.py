"""Images in, model input out, without torch: reading any image and the official normalisation.

Shared by the torch side (`lavt.inference`, the datasets) and the torch-free ONNX runtime
(`lavt.runtime`), so that both see identical pixels: the image is turned into RGB with its
EXIF orientation applied, resized to the model's input with PIL bilinear (what torchvision's
`resize` does on PIL images), scaled to [0, 1] and normalised with the ImageNet mean and
standard deviation, all in float32.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lavt.errors import LAVTUserError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

ImageInput = str | Path | Image.Image | np.ndarray


# Larger images are refused from their header, before any pixel is decoded: Pillow's own
# decompression-bomb threshold (a small file that would decode to gigabytes).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
IMAGE_FORMATS = "PNG, JPEG, WebP, BMP, TIFF or GIF"


def load_image(image: ImageInput, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Any supported input -> an RGB PIL image, EXIF orientation applied.

    Paths and PIL images of any mode (RGBA, LA, P, L, I;16, I, F, CMYK); arrays HxW, HxWx1,
    HxWx3 or HxWx4 of uint8, uint16 (scaled by its maximum range) or float in [0, 1].
    A multi-frame file (animated GIF, TIFF pages) gives its first frame; a file whose header
    declares more than `max_pixels` pixels is refused without being decoded.
    """
    if isinstance(image, (str, Path)):
        return _read_image_file(Path(image), max_pixels)
    if isinstance(image, Image.Image):
        return _to_rgb(_upright(image))
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise LAVTUserError(f"image must be a path, a PIL image or an HxWx3 array, got {type(image).__name__}")


def _read_image_file(path: Path, max_pixels: int | None) -> Image.Image:
    if path.is_dir():
        raise LAVTUserError(f"image {path} is a folder, not an image file; give the path of one {IMAGE_FORMATS} file")
    if not path.is_file():
        raise LAVTUserError(f"image {path} does not exist; check the path")
    try:
        with warnings.catch_warnings():
            # The size is checked below against max_pixels; Pillow's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                pixels = im.width * im.height
                if max_pixels is not None and pixels > max_pixels:
                    raise LAVTUserError(
                        f"image {path} declares {im.width} x {im.height} = {pixels / 1e6:.1f} MP, more than the limit "
                        f"of {max_pixels / 1e6:.1f} MP (a decompression bomb or a huge scan); it was not decoded: "
                        "resize it first"
                    )
                im.load()
                return _to_rgb(ImageOps.exif_transpose(im))
    except LAVTUserError:
        raise
    except UnidentifiedImageError as exc:
        raise LAVTUserError(f"{path} is not a readable image: Pillow cannot identify it; give a {IMAGE_FORMATS} file") from exc
    except Image.DecompressionBombError as exc:  # Pillow refuses at twice its limit, already when opening
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(declared.group(1)) / 1e6:.1f} MP" if declared else "more pixels than Pillow allows"
        raise LAVTUserError(
            f"image {path} declares {size}, more than the limit of {(max_pixels or MAX_PIXELS) / 1e6:.1f} MP (a decompression "
            "bomb or a huge scan); it was not decoded: resize it first"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise LAVTUserError(
            f"{path} is not a readable image: it cannot be decoded ({exc}); the file is damaged or truncated: save or "
            "download it again"
        ) from exc


def _upright(im: Image.Image) -> Image.Image:
    """`im` turned by its EXIF orientation; `im` itself when it needs no turn (exif_transpose
    would copy it: a full-size copy per request for nothing)."""
    return ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) not in (0, 1) else im


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im)
        if arr.dtype.kind == "f":
            arr = np.clip(arr, 0.0, 1.0) * 255.0
        else:
            arr = arr.astype(np.float64) * (255.0 / (65535.0 if arr.max() > 255 else 255.0))
        return Image.fromarray(arr.round().astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels over white, as image viewers show them.
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")  # convert("RGB") of an RGB image copies it


def _array_to_rgb(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or min(arr.shape[:2]) < 1:
        raise LAVTUserError(f"image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = (arr.astype(np.float64) * (255.0 / 65535.0)).round().astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise LAVTUserError("image array holds NaN or infinite values")
        out = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    else:
        raise LAVTUserError(f"image array dtype {arr.dtype} is not supported (use uint8, uint16 or float in [0, 1])")
    pil = Image.fromarray(np.ascontiguousarray(out))
    return _to_rgb(pil)


def image_to_array(
    image: Image.Image,
    size: int | tuple[int, int] | None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> np.ndarray:
    """RGB PIL image -> float32 (3, H, W), resized (bilinear) to `size` and normalised.

    `size` is an int for a square, a (height, width) pair, or None to keep the image size.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
    # in place on the one float copy, channels last, then one transposing copy
    array = np.asarray(image, dtype=np.float32)
    array /= np.float32(255.0)
    array -= np.asarray(mean, dtype=np.float32)
    array /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))

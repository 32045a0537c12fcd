"""Image and mask files: read RGB tiles and class-id masks, pair them by name, check them.

Images are PNG, JPEG or TIFF files holding 8-bit RGB (an alpha channel is dropped). Grayscale
images are refused, since the models read H&E colour; so are images of more than 8 bits per
channel, since no rescaling is right for every file (a 12-bit scan stored in 16 bits would turn
almost black): convert such files to 8-bit RGB first.

Both are bounded before anything is decoded: an image of more than ``max_pixels`` pixels a page
(default :data:`MAX_IMAGE_PIXELS`) or, for TIFFs, of more than ``BYTES_PER_PIXEL * max_pixels``
decoded bytes is refused with a message naming the file, so a small file whose header claims a
giant image (a decompression bomb) cannot exhaust memory.

Masks are single-channel images of the same name (any supported extension) and the same
height and width, whose values are class ids 0..255. Palette PNGs give their palette indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_TIFF_SUFFIXES = (".tif", ".tiff")
#: Images larger than this (pixels) are whole slides: predict a region of them instead.
MAX_IMAGE_PIXELS = 10_000 * 10_000
#: Decoded bytes allowed per pixel of the pixel limit (8-bit RGBA): a TIFF of many pages,
#: samples or bits per pixel is refused before it is decoded when it would exceed this.
BYTES_PER_PIXEL = 4


class ImageError(ValueError):
    """An image or mask file that cannot be used; the message names the file."""


def file_stem(path: str | Path) -> str:
    """The name without its image extension (``a.ome.tif`` → ``a``, ``b.png`` → ``b``)."""
    name = Path(path).name
    lower = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def list_images(folder: str | Path, *, what: str = "image") -> list[Path]:
    """Supported image files in ``folder``, sorted by name.

    Raises
    ------
    FileNotFoundError
        When ``folder`` is not a directory.
    ImageError
        When it holds no supported file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist or is not a folder.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(
            f"No {what} files (PNG, JPEG, TIFF) in {folder}: put the {what}s there, "
            f"one file each."
        )
    return files


def pair_images_and_masks(images: str | Path, masks: str | Path) -> list[tuple[Path, Path]]:
    """Each image of folder ``images`` with the same-named mask of folder ``masks``.

    A mask matches an image when their names without extension are equal (``a.png`` and
    ``a.tif`` match). Every image needs exactly one mask.
    """
    image_files = list_images(images, what="image")
    mask_files = list_images(masks, what="mask")
    by_stem: dict[str, list[Path]] = {}
    for m in mask_files:
        by_stem.setdefault(file_stem(m), []).append(m)
    pairs, missing = [], []
    for img in image_files:
        found = by_stem.get(file_stem(img), [])
        if not found:
            missing.append(img.name)
        elif len(found) > 1:
            raise ImageError(
                f"Several masks match image {img}: {', '.join(str(p) for p in found)}; "
                f"keep one."
            )
        else:
            pairs.append((img, found[0]))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ImageError(
            f"No mask in {masks} for image(s) {shown}: masks need the same name as their image."
        )
    return pairs


def read_rgb(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file as RGB ``(h, w, 3)`` uint8; alpha is dropped, grayscale is refused.

    Parameters
    ----------
    path : str or Path
        PNG, JPEG or TIFF file.
    max_pixels : int
        Refuse larger images (and TIFFs decoding to more than ``BYTES_PER_PIXEL`` bytes per
        pixel of this) before decoding them.
    """
    path = Path(path)
    array = _read_array(path, max_pixels=max_pixels)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 2)):
        raise ImageError(
            f"{path} is a grayscale image (shape {array.shape}): H&E models need RGB colour; "
            f"use the colour image."
        )
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ImageError(f"{path} is not an RGB image: its pixel array has shape {array.shape}.")
    if array.dtype != np.uint8:
        raise ImageError(
            f"{path} has {array.dtype} pixels: only 8-bit RGB images are read; convert it to "
            f"8-bit RGB first (no rescaling suits every file)."
        )
    return np.ascontiguousarray(array[..., :3])


def read_mask(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A mask file as ``(h, w)`` uint8 class ids (``max_pixels``: see :func:`read_rgb`)."""
    path = Path(path)
    array = _read_array(path, mask=True, max_pixels=max_pixels)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            array = rgb[..., 0]
        else:
            raise ImageError(
                f"Mask {path} is a colour image: masks are single-channel images whose values "
                f"are class ids."
            )
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ImageError(f"Mask {path} is not a single-channel image: shape {array.shape}.")
    if array.dtype.kind not in "uib":
        raise ImageError(f"Mask {path} has {array.dtype} values: class ids must be integers.")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ImageError(
            f"Mask {path} holds values {array.min()}..{array.max()}: class ids must be 0..255."
        )
    return array.astype(np.uint8)


def check_same_shape(image: np.ndarray, mask: np.ndarray, image_path, mask_path) -> None:
    """Raise :class:`ImageError` naming both files when image and mask sizes differ."""
    if tuple(image.shape[:2]) != tuple(mask.shape[:2]):
        raise ImageError(
            f"Image {image_path} is {image.shape[0]}x{image.shape[1]} (height x width) but its "
            f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]}: they must be the same size."
        )


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Write ``(h, w)`` uint8 class ids as a single-channel PNG (or TIFF by extension)."""
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"Labels must be a (h, w) uint8 array, got {labels.shape} {labels.dtype}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        tifffile.imwrite(path, labels, compression="zlib")
    else:
        from PIL import Image

        Image.fromarray(labels, mode="L").save(path)
    return path


_SIGNATURES = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
               b"II+\x00": "TIFF", b"MM\x00+": "TIFF"}
_KIND_OF_SUFFIX = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}


def _content_kind(path: Path) -> str | None:
    """"PNG", "JPEG" or "TIFF" from the first bytes of ``path``; None for anything else."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    return next((kind for sig, kind in _SIGNATURES.items() if head.startswith(sig)), None)


def _unreadable(path: Path, exc: Exception) -> ImageError:
    """Why a decoder failed on ``path``, in words: misnamed, damaged, or not an image."""
    kind, named = _content_kind(path), _KIND_OF_SUFFIX[path.suffix.lower()]
    if kind is not None and kind != named:
        return ImageError(
            f"{path} is a {kind} image named {path.suffix}: rename it with the suffix of its "
            f"format (.{kind.lower()})."
        )
    if kind is None:
        return ImageError(f"{path} is not a {named} image (its first bytes are not a {named} "
                          f"signature): it is another kind of file, or damaged ({exc}).")
    return ImageError(f"Cannot read {path}: the {kind} file is damaged or truncated ({exc}); "
                      "copy it again from its source.")


def _read_array(path: Path, *, mask: bool = False, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{'Mask' if mask else 'Image'} file {path} does not exist.")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: unsupported file type; use PNG, JPEG or TIFF.")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes): it holds no image. Copy it again from its source.")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            return _read_tiff(path, max_pixels)
        from PIL import Image

        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise ImageError(_too_large(path, (im.height, im.width)))
            if im.mode == "P" and not mask:
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            return np.asarray(im)
    except (ImageError, FileNotFoundError):
        raise
    except Exception as exc:  # decoders raise many types; name the file in one message
        raise _unreadable(path, exc) from exc


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    import tifffile

    from .slide import quiet_tifffile

    with quiet_tifffile(), tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        if "Y" in axes and "X" in axes:
            h, w = shape[axes.index("Y")], shape[axes.index("X")]
            if h * w > max_pixels:
                raise ImageError(_too_large(path, (h, w)))
        decoded = int(np.prod(shape, dtype=np.int64)) * np.dtype(series.dtype).itemsize
        if decoded > BYTES_PER_PIXEL * max_pixels:
            raise ImageError(
                f"{path} decodes to {decoded:,} bytes (shape {tuple(shape)}, axes {axes}, "
                f"{series.dtype}), more than {BYTES_PER_PIXEL * max_pixels:,}: it is not one "
                f"image tile. Save the image itself as an 8-bit RGB PNG or TIFF."
            )
        array = series.asarray()
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (S, Y, X) storage
    return array


def _too_large(path: Path, shape) -> str:
    return (
        f"{path} is {shape[0]}x{shape[1]} pixels, too large to read whole: it is a whole-slide "
        f"image; predict a region of it (--region Y X H W --level L)."
    )

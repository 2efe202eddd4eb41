"""Turning encoded image bytes into the model's input tensor, with errors that name the image.

Runs on worker threads: Pillow releases the GIL while it decodes and resizes, so several images
decode in parallel and the event loop keeps serving.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt

from kakehashi_inference.errors import InvalidInput, PayloadTooLarge
from kakehashi_inference.runtimes import ImageSpec
from kakehashi_inference.settings import Preprocess

_SCALES: dict[str, tuple[float, float]] = {  # x * scale + offset
    "tf": (1 / 127.5, -1.0),
    "unit": (1 / 255.0, 0.0),
    "raw": (1.0, 0.0),
}


def decode_image(
    data: bytes, index: int, spec: ImageSpec, preprocess: Preprocess, max_pixels: int
) -> npt.NDArray[np.float32]:
    """`data` as a (height, width, channels) float32 array scaled as the model expects."""
    # Pillow is imported on first use (or by `preload()` once the server is ready), not at
    # start: readiness waits for nothing it does not need.
    from PIL import Image, ImageOps, UnidentifiedImageError

    # Our pixel limit, checked below before any pixel is decoded, is the only one: Pillow's
    # own bomb check (at 2 x 89.5 Mpx) would answer with another status, or with a limit that
    # is not the one configured when `max_pixels` is set higher than Pillow's.
    Image.MAX_IMAGE_PIXELS = None
    try:
        image: Any = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise PayloadTooLarge(
                f"image has {width}x{height} pixels, more than the {max_pixels} pixels allowed",
                image=index,
            )
        mode = "L" if spec.channels == 1 else "RGB"
        # JPEG can decode straight at 1/2, 1/4 or 1/8 scale: a 4000x3000 photo bound for
        # 224x224 decodes at 500x375, 16 times less work than decoding it whole.
        image.draft(mode, (spec.width, spec.height))
        image = ImageOps.exif_transpose(image)
        image = image.convert(mode)
        if image.size != (spec.width, spec.height):
            image = image.resize(
                (spec.width, spec.height), Image.Resampling.BILINEAR, reducing_gap=2.0
            )
        pixels = np.asarray(image, dtype=np.float32)
    except UnidentifiedImageError:
        raise InvalidInput(
            "not a decodable image (the bytes match no known image format)", image=index
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidInput(f"image data is corrupt or truncated ({error})", image=index) from None
    if spec.channels == 1:
        pixels = pixels[..., np.newaxis]
    scale, offset = _SCALES[preprocess]
    pixels *= scale
    pixels += offset
    return pixels


def preload() -> None:
    """Import Pillow's decoders now (off the request path, after readiness)."""
    from PIL import Image, ImageOps  # noqa: F401

    Image.init()

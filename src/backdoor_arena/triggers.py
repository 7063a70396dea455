"""Triggers: pure functions over image batches [N, C, H, W] of float pixels in [0, 1].

`stamp` pastes a patch through a mask at a location; `blend` mixes a full-size pattern in with weight
alpha (Chen et al. 2017). The trigger classes below are frozen, JSON-serialisable descriptions that
compose these functions; they travel inside an attack spec, so image patterns are embedded as data.

Trigger kinds are plugins: each registered class in `TRIGGERS` (name = the "kind" of its JSON form)
provides `build(channels, *, image_size, **options)` (its options are what `make_trigger` and the CLI
accept), `from_dict(data)`, `apply(x)` and `to_dict()`. A new kind is one class and one registration;
`trigger_from_dict` dispatches on the kind through the registry.

A JSON form comes from a file someone else wrote (an attack spec): the built-in kinds validate it with
their `spec_schema` (schemas.py: strict types, finite values in [0, 1], bounded and consistent shapes, no
unknown keys), and `check_fits` tells whether a trigger applies to a model's inputs. Options given to
`build` are checked as strictly (sizes and positions within the image, colours and alpha finite), and
trigger images are read as regular files of bounded size whose header is checked before decoding.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from .errors import ArenaError, ConfigError, IncompatibleError
from .registry import Registry
from .safeio import MiB, read_bytes, shown
from .schemas import MAX_SIDE, NAMED_POSITIONS, BlendTriggerSpec, PatchTriggerSpec, Strict, json_form, validate

Position = tuple[int, int] | str
NAMED_COLORS = {
    "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "yellow": (1.0, 1.0, 0.0),
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
}


# --------------------------------------------------------------------------- pure tensor functions
def stamp(x: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """x with `patch` [C, h, w] pasted through `mask` [h, w] (values in [0, 1]) at (top, left). New tensor."""
    _check_batch(x)
    h, w = patch.shape[-2:]
    if top < 0 or left < 0 or top + h > x.shape[-2] or left + w > x.shape[-1]:
        raise IncompatibleError(
            f"a {h}x{w} trigger at row {top}, column {left} does not fit a {x.shape[-2]}x{x.shape[-1]} image"
        )
    out = x.clone()
    region = out[:, :, top : top + h, left : left + w]
    m = mask.to(x.dtype).expand(x.shape[1], h, w)
    out[:, :, top : top + h, left : left + w] = region * (1 - m) + patch.to(x.dtype).expand_as(m) * m
    return out


def blend(x: torch.Tensor, pattern: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) * x + alpha * pattern, pattern broadcast over the batch."""
    _check_batch(x)
    if pattern.shape[-2:] != x.shape[-2:]:
        raise IncompatibleError(f"blend pattern is {tuple(pattern.shape)}, images are {tuple(x.shape[1:])}")
    return ((1 - alpha) * x + alpha * pattern.to(x.dtype)).clamp_(0, 1)


def place(position: Position, h: int, w: int, height: int, width: int, margin: int) -> tuple[int, int]:
    """Top-left corner of an h x w trigger; negative coordinates count from the bottom/right edge."""
    if isinstance(position, str):
        rows = {"top": margin, "bottom": height - h - margin, "center": (height - h) // 2}
        cols = {"left": margin, "right": width - w - margin, "center": (width - w) // 2}
        if position == "center":
            return rows["center"], cols["center"]
        vert, horiz = position.split("-")
        return rows[vert], cols[horiz]
    top, left = position
    return (top if top >= 0 else height + top - h + 1), (left if left >= 0 else width + left - w + 1)


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise IncompatibleError(f"triggers apply to float image batches [N, C, H, W]; got {x.dtype} {tuple(x.shape)}")


# --------------------------------------------------------------------------- trigger descriptions
class Trigger(Protocol):
    """What an attack needs of a trigger: apply it to a batch, and describe it as JSON."""

    kind: ClassVar[str]

    def apply(self, x: torch.Tensor) -> torch.Tensor: ...

    def to_dict(self) -> dict[str, Any]: ...


TRIGGERS: Registry[Any] = Registry("trigger kind")

# Parameters a trigger's `build` takes from the dataset, not from the user.
DATASET_PARAMS = ("channels", "image_size")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _channels(n: int) -> str:
    return f"{n} channel" + ("" if n == 1 else "s")


def _color(value: Any, channels: int) -> tuple[float, ...]:
    if isinstance(value, str):
        if value not in NAMED_COLORS:
            raise ConfigError(f"unknown colour {value!r}; use one of {', '.join(NAMED_COLORS)} or R,G,B in [0, 1]")
        rgb = NAMED_COLORS[value]
        # On grey-scale images a colour becomes its brightness (max channel): yellow stays bright.
        return rgb if channels == 3 else (max(rgb),) * channels
    counts = "1 value" if channels == 1 else f"1 or {channels} values"
    if (not isinstance(value, (list, tuple)) or len(value) not in (1, channels)
            or not all(_is_real(v) and 0 <= v <= 1 for v in value)):
        raise ConfigError(f"colour {value!r} must be a name ({', '.join(NAMED_COLORS)}) or {counts} in [0, 1] "
                          f"(the images have {_channels(channels)})")
    vals = tuple(float(v) for v in value)
    return vals if len(vals) == channels else vals * channels


def _check_position(position: Any) -> Position:
    if isinstance(position, str):
        if position not in NAMED_POSITIONS:
            raise ConfigError(f"unknown position {position!r}; use {', '.join(NAMED_POSITIONS)} or ROW,COL")
        return position
    if isinstance(position, (list, tuple)) and len(position) == 2 and all(_is_int(v) for v in position):
        return (int(position[0]), int(position[1]))
    raise ConfigError(f"position must be a name ({', '.join(NAMED_POSITIONS)}) or two integers ROW,COL; "
                      f"got {position!r}")


def _nested(t: torch.Tensor) -> tuple:
    return tuple(_to_tuple(t.tolist()))


def _to_tuple(v: Any) -> Any:
    return tuple(_to_tuple(i) for i in v) if isinstance(v, (list, tuple)) else round(float(v), 6)


def _size(size: Any, image_size: int = 0) -> int:
    limit = image_size if image_size > 0 else MAX_SIDE
    if not _is_int(size) or not 1 <= size <= limit:
        within = f"the {image_size}x{image_size} image" if image_size > 0 else f"{MAX_SIDE} pixels"
        raise ConfigError(f"trigger size must be an integer from 1 to {limit} (within {within}); got {size!r}")
    return size


def _margin(margin: Any) -> int:
    if not _is_int(margin) or not 0 <= margin <= MAX_SIDE:
        raise ConfigError(f"trigger margin must be a non-negative integer (pixels), got {margin!r}")
    return margin


def _seed(seed: Any) -> int:
    if not _is_int(seed) or not 0 <= seed < 2**63:
        raise ConfigError(f"trigger seed must be an integer in [0, 2**63), got {seed!r}")
    return seed


def _check_fits(h: int, w: int, position: Position, margin: int, image_size: int) -> None:
    """An h x w trigger at `position` lies within an image_size x image_size image (when the size is known)."""
    if image_size <= 0:
        return
    top, left = place(position, h, w, image_size, image_size, margin)
    if top < 0 or left < 0 or top + h > image_size or left + w > image_size:
        where = f"position {position!r}" + (f" with margin {margin}" if isinstance(position, str) else "")
        raise ConfigError(f"a {h}x{w} trigger at {where} does not fit the {image_size}x{image_size} images "
                          f"(it would start at row {top}, column {left}); move it or make it smaller")


def _malformed(exc: Exception) -> ConfigError:
    return ConfigError(f"trigger description is malformed ({exc!r}); regenerate the attack spec")


def _planes_shape(planes: list[list[list[float]]], name: str) -> tuple[int, int, int]:
    """[C][h][w] of a nested list whose every channel and row has the same length, or a ConfigError."""
    c, h, w = len(planes), len(planes[0]), len(planes[0][0])
    if any(len(p) != h for p in planes) or any(len(r) != w for p in planes for r in p):
        raise ConfigError(f"trigger: {name} must be a [C][H][W] array (every channel H rows of W values); "
                          "its rows or channels differ in length")
    return c, h, w


_PLACEMENT_HELP = {
    "position": "Where the trigger goes: bottom-right, bottom-left, top-right, top-left, bottom-center, center, "
                "or ROW,COL (negative: from the bottom/right edge).",
    "margin": "Pixels between a named position and the image border.",
}


@dataclass(frozen=True)
class PatchTrigger:
    """A patch pasted through a mask at a position. The base of the patch kinds (pixel, square, pattern,
    hollow-square, x, image), which share this JSON form (schema `PatchTriggerSpec`) and differ in how `build` draws the patch."""

    patch: tuple  # nested lists [C][h][w]
    mask: tuple  # nested lists [h][w]
    position: Position = "bottom-right"
    margin: int = 1

    kind: ClassVar[str] = "patch"
    spec_schema: ClassVar[type[Strict]] = PatchTriggerSpec
    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"position": "middle-ish"}, "position"), ({"margin": -1}, "margin"), ({"margin": 40}, "does not fit"),
        ({"position": (20, 3)}, "does not fit"))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        patch = torch.tensor(self.patch, dtype=torch.float32)
        mask = torch.tensor(self.mask, dtype=torch.float32)
        if patch.shape[0] not in (1, x.shape[1]):
            raise IncompatibleError(f"the trigger has {_channels(patch.shape[0])}, the images {x.shape[1]}")
        top, left = place(self.position, *patch.shape[-2:], x.shape[-2], x.shape[-1], self.margin)
        return stamp(x, patch, mask, top, left)

    def to_dict(self) -> dict[str, Any]:
        pos = self.position if isinstance(self.position, str) else list(self.position)
        return {"kind": self.kind, "patch": self.patch, "mask": self.mask, "position": pos, "margin": self.margin}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchTrigger:
        s = validate(cls.spec_schema, json_form(data), "trigger")
        _c, h, w = _planes_shape(s.patch, "patch")
        if len(s.mask) != h or any(len(r) != w for r in s.mask):
            raise ConfigError(f"trigger: the mask must be {h}x{w} like the patch; got {len(s.mask)} rows of "
                              f"{sorted({len(r) for r in s.mask})} values")
        pos = tuple(s.position) if isinstance(s.position, list) else s.position
        return cls(_to_tuple(s.patch), _to_tuple(s.mask), pos, s.margin)

    @classmethod
    def _of(cls, patch: torch.Tensor, mask: torch.Tensor, position: Any, margin: Any,
            image_size: int = 0) -> PatchTrigger:
        position, margin = _check_position(position), _margin(margin)
        _check_fits(patch.shape[-2], patch.shape[-1], position, margin, image_size)
        return cls(_nested(patch), _nested(mask), position, margin)


@TRIGGERS.register("pixel")
@dataclass(frozen=True)
class PixelTrigger(PatchTrigger):
    """One pixel of a colour (BadNets' single-pixel backdoor)."""

    kind: ClassVar[str] = "pixel"
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        *PatchTrigger.bad_params, ({"color": (0.5, float("nan"), 1.0)}, "colour"), ({"color": (2.0,)}, "colour"))
    param_help: ClassVar[dict[str, str]] = {
        "color": "A colour name (white, black, yellow, red, green, blue) or R,G,B values in [0, 1].",
        **_PLACEMENT_HELP,
    }

    @classmethod
    def build(cls, channels: int, *, color: Any = "white", position: Any = "bottom-right", margin: int = 1,
              image_size: int = 0) -> PixelTrigger:
        patch = torch.tensor(_color(color, channels)).view(channels, 1, 1)
        return cls._of(patch, torch.ones(1, 1), position, margin, image_size)


@TRIGGERS.register("square")
@dataclass(frozen=True)
class SquareTrigger(PatchTrigger):
    """A filled square of a colour."""

    kind: ClassVar[str] = "square"
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        *PixelTrigger.bad_params, ({"size": 0}, "size"), ({"size": 17}, "size"), ({"size": True}, "size"),
        ({"color": "mauve"}, "colour"))
    param_help: ClassVar[dict[str, str]] = {"size": "Side of the square in pixels.", **PixelTrigger.param_help}

    @classmethod
    def build(cls, channels: int, *, size: int = 3, color: Any = "white", position: Any = "bottom-right",
              margin: int = 1, image_size: int = 0) -> SquareTrigger:
        size = _size(size, image_size)
        patch = torch.tensor(_color(color, channels)).view(channels, 1, 1).expand(channels, size, size)
        return cls._of(patch, torch.ones(size, size), position, margin, image_size)


@TRIGGERS.register("pattern")
@dataclass(frozen=True)
class PatternTrigger(PatchTrigger):
    """A checkerboard: coloured where row + column is even, black elsewhere (BadNets' pattern backdoor)."""

    kind: ClassVar[str] = "pattern"
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = SquareTrigger.bad_params
    param_help: ClassVar[dict[str, str]] = {"size": "Side of the checkerboard in pixels.",
                                            **PixelTrigger.param_help}

    @classmethod
    def build(cls, channels: int, *, size: int = 3, color: Any = "white", position: Any = "bottom-right",
              margin: int = 1, image_size: int = 0) -> PatternTrigger:
        size = _size(size, image_size)
        ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        on = ((ii + jj) % 2 == 0).float()
        patch = torch.tensor(_color(color, channels)).view(channels, 1, 1) * on
        return cls._of(patch, torch.ones(size, size), position, margin, image_size)


def _outline_size(size: Any, image_size: int, what: str) -> int:
    """The side of an outline-like trigger (hollow square, X): at least 3 pixels, so that the shape differs
    from a filled square, and within the image."""
    size = _size(size, image_size)
    if size < 3:
        raise ConfigError(f"{what} trigger size must be at least 3 (smaller, it is a filled square); got {size!r}")
    return size


@TRIGGERS.register("hollow-square")
@dataclass(frozen=True)
class HollowSquareTrigger(PatchTrigger):
    """The outline of a square, one pixel wide, in a colour; the inside is left as it is."""

    kind: ClassVar[str] = "hollow-square"
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        *PixelTrigger.bad_params, ({"size": 2}, "size"), ({"size": 17}, "size"), ({"size": 4.5}, "size"),
        ({"color": "mauve"}, "colour"))
    param_help: ClassVar[dict[str, str]] = {"size": "Side of the square outline in pixels (at least 3).",
                                            **PixelTrigger.param_help}

    @classmethod
    def build(cls, channels: int, *, size: int = 6, color: Any = "white", position: Any = "bottom-right",
              margin: int = 1, image_size: int = 0) -> HollowSquareTrigger:
        size = _outline_size(size, image_size, "hollow-square")
        mask = torch.ones(size, size)
        mask[1:-1, 1:-1] = 0
        patch = torch.tensor(_color(color, channels)).view(channels, 1, 1).expand(channels, size, size)
        return cls._of(patch, mask, position, margin, image_size)


@TRIGGERS.register("x")
@dataclass(frozen=True)
class XTrigger(PatchTrigger):
    """An X: both diagonals of a size x size square, one pixel wide, in a colour; the rest is left as it is."""

    kind: ClassVar[str] = "x"
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = HollowSquareTrigger.bad_params
    param_help: ClassVar[dict[str, str]] = {"size": "Side of the square whose two diagonals are drawn (at least 3).",
                                            **PixelTrigger.param_help}

    @classmethod
    def build(cls, channels: int, *, size: int = 5, color: Any = "white", position: Any = "bottom-right",
              margin: int = 1, image_size: int = 0) -> XTrigger:
        size = _outline_size(size, image_size, "x")
        eye = torch.eye(size)
        mask = torch.maximum(eye, eye.flip(1))
        patch = torch.tensor(_color(color, channels)).view(channels, 1, 1).expand(channels, size, size)
        return cls._of(patch, mask, position, margin, image_size)


DATA_URI_PREFIX = "data:image/"
# Trigger images: read as regular files only, and refused above these sizes before any pixel is decoded.
MAX_IMAGE_BYTES = 32 * MiB
MAX_IMAGE_SIDE = MAX_SIDE
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")


def _image_source(path: Any) -> tuple[bytes, str]:
    """The bytes of a trigger image (a regular file, or a base64 data URI) and how to name it in a message."""
    if not isinstance(path, (str, Path)):
        raise ConfigError(f"trigger image path must be a string (a file or a data: URI), got {type(path).__name__}")
    if str(path).strip() == "":
        raise ConfigError("trigger image: the path is empty; give the path of a PNG or JPEG file "
                          "(image:PATH, or the option path=PATH)")
    if isinstance(path, str) and path.startswith(DATA_URI_PREFIX):
        what = "the trigger image data URI"
        if len(path) > MAX_IMAGE_BYTES * 4 // 3 + 100:
            raise ConfigError(f"{what} is larger than {MAX_IMAGE_BYTES // MiB} MiB; use a smaller image")
        try:
            return base64.b64decode(path.split(",", 1)[1], validate=True), what
        except (IndexError, binascii.Error, ValueError) as exc:
            raise ConfigError(f"{what} is not valid base64 ({exc})") from None
    return read_bytes(path, "trigger image", ConfigError, MAX_IMAGE_BYTES), f"trigger image {shown(path)}"


def read_image(path: str | Path, channels: int, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """An image as (pixels [C, h, w], mask [h, w]); the alpha channel, if any, is the mask. `path` is a PNG or
    JPEG (or BMP, GIF, WebP) file, or the image itself as a base64 data URI (`data:image/png;base64,...`, e.g.
    in a config). The file must be a regular file of at most 32 MiB and the image at most 4096x4096 pixels,
    checked from its header before any pixel is decoded; every failure is one ConfigError naming it."""
    from PIL import Image, UnidentifiedImageError

    data, what = _image_source(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
            width, height = img.size
            if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
                raise ConfigError(f"{what} is {width}x{height} pixels, more than the {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} "
                                  "a trigger image may have; use a smaller image")
            img.load()
            rgba = img.convert("RGBA")
            if size is not None:
                rgba = rgba.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(rgba, dtype=np.float32).copy()
    except ConfigError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ConfigError(f"{what} claims more pixels than the {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} a trigger image "
                          "may have (a decompression bomb?); use a smaller image") from None
    except MemoryError:
        raise ConfigError(f"{what} is too large to decode; use a smaller image") from None
    except UnidentifiedImageError:
        raise ConfigError(f"{what} is not a {', '.join(IMAGE_FORMATS[:-1])} or WebP image (unknown or unsupported "
                          "format)") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure (OSError, SyntaxError, ValueError...) is bad input
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConfigError(f"{what} cannot be read as a {', '.join(IMAGE_FORMATS[:-1])} or WebP image "
                          f"({reason})") from None
    pixels_t = torch.from_numpy(arr) / 255
    rgb, alpha = pixels_t[..., :3].permute(2, 0, 1), pixels_t[..., 3]
    pixels = rgb if channels == 3 else rgb.mean(0, keepdim=True).expand(channels, -1, -1)
    return pixels.contiguous(), alpha


# A 3x3 RGBA PNG (red, a green centre): the conformance suite's image, inline so that no file is needed.
EXAMPLE_IMAGE = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAMAAAADCAYAAABWKLW/AAAAG0lEQVR4nGM8wcX1nwEKmBgYGBic"
                 "9kE4jMgyAGthBLtBZ4rbAAAAAElFTkSuQmCC")


@TRIGGERS.register("image")
@dataclass(frozen=True)
class ImageTrigger(PatchTrigger):
    """An image pasted as it is (its alpha channel is the mask), e.g. a sticker; `kind:PATH` on the command
    line gives the path (`image:flower.png`)."""

    kind: ClassVar[str] = "image"
    example_params: ClassVar[dict[str, Any]] = {"path": EXAMPLE_IMAGE}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"path": "no/such/image.png"}, "does not exist"), ({"path": ""}, "path is empty"), ({"size": 0}, "size"),
        ({"size": 17}, "size"), ({"path": "data:image/png;base64,%%"}, "base64"), *PatchTrigger.bad_params)
    param_help: ClassVar[dict[str, str]] = {
        "path": "The image: a PNG or JPEG file (transparency is kept as the mask), or a base64 data: URI.",
        "size": "Resize the image to size x size pixels (default: as it is).",
        **_PLACEMENT_HELP,
    }

    @classmethod
    def build(cls, channels: int, *, path: str, size: int | None = None, position: Any = "bottom-right",
              margin: int = 1, image_size: int = 0) -> ImageTrigger:
        side = None if size is None else _size(size, image_size)
        pixels, mask = read_image(path, channels, None if side is None else (side, side))
        h, w = mask.shape
        if image_size > 0 and (h > image_size or w > image_size):
            name = "the trigger image" if str(path).startswith(DATA_URI_PREFIX) else f"trigger image {shown(path)}"
            raise ConfigError(f"{name} is {w}x{h} pixels, larger than the {image_size}x{image_size} images; give a "
                              f"size (at most {image_size}) to resize it")
        return cls._of(pixels, mask, position, margin, image_size)


@TRIGGERS.register("blend")
@dataclass(frozen=True)
class BlendTrigger:
    """Chen et al. 2017: the whole image blended with a pattern (uniform noise or an image) at weight alpha."""

    pattern: tuple  # nested lists [C][H][W]
    alpha: float = 0.2

    kind: ClassVar[str] = "blend"
    spec_schema: ClassVar[type[Strict]] = BlendTriggerSpec
    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"alpha": 1.5}, "alpha"), ({"alpha": 0}, "alpha"), ({"alpha": float("nan")}, "alpha"),
        ({"alpha": True}, "alpha"), ({"path": "no/such/image.png"}, "does not exist"), ({"path": ""}, "path is empty"),
        ({"seed": -1}, "seed"))
    param_help: ClassVar[dict[str, str]] = {
        "alpha": "Weight of the pattern in the blend, in (0, 1].",
        "path": "An image (file or data: URI) to blend in; default: seeded uniform noise.",
        "seed": "Seed of the noise pattern.",
    }

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        pattern = torch.tensor(self.pattern, dtype=torch.float32)
        _check_batch(x)
        if pattern.shape[0] not in (1, x.shape[1]):
            raise IncompatibleError(f"the blend pattern has {_channels(pattern.shape[0])}, the images {x.shape[1]}")
        return blend(x, pattern, self.alpha)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "pattern": self.pattern, "alpha": self.alpha}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlendTrigger:
        s = validate(cls.spec_schema, json_form(data), "trigger")
        _planes_shape(s.pattern, "pattern")
        return cls(_to_tuple(s.pattern), float(s.alpha))

    @classmethod
    def build(cls, channels: int, *, image_size: int, alpha: float = 0.2, path: str | None = None,
              seed: int = 0) -> BlendTrigger:
        if not _is_real(alpha) or not 0 < alpha <= 1:
            raise ConfigError(f"blend alpha must be a number in (0, 1], got {alpha!r}")
        if not _is_int(image_size) or not 1 <= image_size <= MAX_SIDE:
            raise ConfigError(f"blend image_size must be an integer from 1 to {MAX_SIDE}, got {image_size!r}")
        if path is None:
            gen = torch.Generator().manual_seed(_seed(seed))
            pattern = torch.rand(channels, image_size, image_size, generator=gen)
        else:
            pattern, _mask = read_image(path, channels, (image_size, image_size))
        return cls(_nested(pattern), float(alpha))


def trigger_options(kind: str) -> list[str]:
    """The options a trigger kind takes (its `build` keywords, less the dataset's channels and image_size)."""
    params = inspect.signature(TRIGGERS.get(kind).build).parameters
    return [p for p in params if p not in DATASET_PARAMS]


def make_trigger(kind: str, channels: int, image_size: int, **options: Any) -> Trigger:
    """Build a trigger by kind. `kind` may be `KIND:PATH`, shorthand for that kind with option path=PATH
    (for kinds that take a path: `image:flower.png`)."""
    if isinstance(kind, str) and ":" in kind:
        kind, path = kind.split(":", 1)
        if "path" not in trigger_options(kind):
            raise ConfigError(f"trigger kind {kind!r} takes no path, so {kind}:PATH is not allowed")
        if path.strip() == "":
            raise ConfigError(f"trigger {kind}: has an empty path; write {kind}:PATH with the path of a PNG or JPEG "
                              "file")
        options = {**options, "path": path}
    cls = TRIGGERS.get(kind)
    options = {k: v for k, v in options.items() if v is not None}
    allowed = set(trigger_options(kind))
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"trigger kind {kind!r} does not take {unknown}; it takes {sorted(allowed)}")
    return cls.build(channels, image_size=image_size, **options)


def trigger_from_dict(data: Any) -> Trigger:
    """Rebuild a trigger from its JSON form (an attack spec), through the registered class of its kind.
    A kind that declares a `spec_schema` (pydantic, schemas.py) is validated by it: types, finite values in
    [0, 1], shapes, no unknown keys; every problem is one ConfigError naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"trigger: must be an object with a 'kind', got {type(data).__name__}")
    if "kind" not in data:
        raise ConfigError(f"trigger: the 'kind' key is missing (one of {', '.join(TRIGGERS.names())})")
    try:
        cls = TRIGGERS.get(data["kind"])
    except ConfigError as exc:
        raise ConfigError(f"trigger: kind: {exc}") from None
    try:
        return cls.from_dict(data)
    except ArenaError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        raise _malformed(exc) from None


def check_fits(trigger: Trigger, input_shape: tuple[int, ...] | list[int]) -> None:
    """IncompatibleError unless `trigger` applies to images of `input_shape` [C, H, W] (channels agree, the
    patch lies inside the image, the blend pattern has the image's size): tried on one blank image."""
    c, h, w = (int(v) for v in input_shape)
    try:
        out = trigger.apply(torch.zeros(1, c, h, w))
    except ArenaError as exc:
        raise IncompatibleError(f"the trigger does not fit the model's {c}x{h}x{w} inputs: {exc}") from None
    except (RuntimeError, ValueError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise IncompatibleError(f"the trigger does not fit the model's {c}x{h}x{w} inputs ({reason})") from None
    if tuple(out.shape) != (1, c, h, w):
        raise IncompatibleError(f"the trigger turns {c}x{h}x{w} inputs into {list(out.shape[1:])}")

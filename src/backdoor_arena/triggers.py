"""Triggers: pure functions over image batches [N, C, H, W] of float pixels in [0, 1].

`stamp` pastes a patch through a mask at a location; `blend` mixes a full-size pattern in with weight
alpha (Chen et al. 2017). The trigger classes below are frozen, JSON-serialisable descriptions that
compose these functions; they travel inside an attack spec, so image patterns are embedded as data.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, IncompatibleError
from .registry import Registry

Position = tuple[int, int] | str
NAMED_POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "bottom-center", "center")
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
TRIGGERS: Registry[Callable[..., Trigger]] = Registry("trigger kind")


def _color(value: Any, channels: int) -> tuple[float, ...]:
    if isinstance(value, str):
        if value not in NAMED_COLORS:
            raise ConfigError(f"unknown colour {value!r}; use one of {', '.join(NAMED_COLORS)} or R,G,B in [0, 1]")
        rgb = NAMED_COLORS[value]
        # On grey-scale images a colour becomes its brightness (max channel): yellow stays bright.
        return rgb if channels == 3 else (max(rgb),) * channels
    vals = tuple(float(v) for v in value)
    if len(vals) not in (1, channels) or not all(0 <= v <= 1 for v in vals):
        raise ConfigError(f"colour {value!r} needs 1 or {channels} values in [0, 1]")
    return vals if len(vals) == channels else vals * channels


def _check_position(position: Any) -> Position:
    if isinstance(position, str):
        if position not in NAMED_POSITIONS:
            raise ConfigError(f"unknown position {position!r}; use {', '.join(NAMED_POSITIONS)} or ROW,COL")
        return position
    if isinstance(position, (list, tuple)) and len(position) == 2 and all(isinstance(v, int) for v in position):
        return (int(position[0]), int(position[1]))
    raise ConfigError(f"position must be a name or two integers ROW,COL; got {position!r}")


@dataclass(frozen=True)
class PatchTrigger:
    """A patch pasted through a mask: covers `pixel`, `square`, `pattern` and `image` kinds."""

    kind: str
    patch: tuple  # nested lists [C][h][w]
    mask: tuple  # nested lists [h][w]
    position: Position = "bottom-right"
    margin: int = 1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        patch = torch.tensor(self.patch, dtype=torch.float32)
        mask = torch.tensor(self.mask, dtype=torch.float32)
        if patch.shape[0] not in (1, x.shape[1]):
            raise IncompatibleError(f"the trigger has {patch.shape[0]} channels, the images {x.shape[1]}")
        top, left = place(self.position, *patch.shape[-2:], x.shape[-2], x.shape[-1], self.margin)
        return stamp(x, patch, mask, top, left)

    def to_dict(self) -> dict[str, Any]:
        pos = self.position if isinstance(self.position, str) else list(self.position)
        return {"kind": self.kind, "patch": self.patch, "mask": self.mask, "position": pos, "margin": self.margin}


@dataclass(frozen=True)
class BlendTrigger:
    """Chen et al. 2017: the whole image blended with a pattern (uniform noise or an image) at weight alpha."""

    pattern: tuple  # nested lists [C][H][W]
    alpha: float = 0.2
    kind: str = "blend"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return blend(x, torch.tensor(self.pattern, dtype=torch.float32), self.alpha)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "pattern": self.pattern, "alpha": self.alpha}


Trigger = PatchTrigger | BlendTrigger


def _nested(t: torch.Tensor) -> tuple:
    return tuple(_to_tuple(t.tolist()))


def _to_tuple(v: Any) -> Any:
    return tuple(_to_tuple(i) for i in v) if isinstance(v, (list, tuple)) else round(float(v), 6)


def _size(size: int) -> int:
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"trigger size must be a positive integer, got {size!r}")
    return size


@TRIGGERS.register("pixel")
def make_pixel(channels: int, *, color: Any = "white", position: Any = "bottom-right", margin: int = 1, image_size: int = 0):
    patch = torch.tensor(_color(color, channels)).view(channels, 1, 1)
    return PatchTrigger("pixel", _nested(patch), _nested(torch.ones(1, 1)), _check_position(position), margin)


@TRIGGERS.register("square")
def make_square(channels: int, *, size: int = 3, color: Any = "white", position: Any = "bottom-right",
                margin: int = 1, image_size: int = 0):
    size = _size(size)
    patch = torch.tensor(_color(color, channels)).view(channels, 1, 1).expand(channels, size, size)
    return PatchTrigger("square", _nested(patch), _nested(torch.ones(size, size)), _check_position(position), margin)


@TRIGGERS.register("pattern")
def make_pattern(channels: int, *, size: int = 3, color: Any = "white", position: Any = "bottom-right",
                 margin: int = 1, image_size: int = 0):
    """A checkerboard: coloured where row + column is even, black elsewhere (BadNets' pattern backdoor)."""
    size = _size(size)
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    on = ((ii + jj) % 2 == 0).float()
    patch = torch.tensor(_color(color, channels)).view(channels, 1, 1) * on
    return PatchTrigger("pattern", _nested(patch), _nested(torch.ones(size, size)), _check_position(position), margin)


def read_image(path: str | Path, channels: int, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """An image file as (pixels [C, h, w], mask [h, w]); the alpha channel, if any, is the mask."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"trigger image {str(path)!r} does not exist; give the path of a PNG or JPEG file")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"trigger image {str(path)!r} cannot be read as an image ({exc})") from None
    rgba = img.convert("RGBA")
    if size is not None:
        rgba = rgba.resize((size[1], size[0]), Image.BILINEAR)
    arr = torch.from_numpy(np.asarray(rgba, dtype=np.float32).copy()) / 255
    rgb, alpha = arr[..., :3].permute(2, 0, 1), arr[..., 3]
    pixels = rgb if channels == 3 else rgb.mean(0, keepdim=True).expand(channels, -1, -1)
    return pixels.contiguous(), alpha


@TRIGGERS.register("image")
def make_image(channels: int, *, path: str, size: int | None = None, position: Any = "bottom-right",
               margin: int = 1, image_size: int = 0):
    pixels, mask = read_image(path, channels, None if size is None else (_size(size), _size(size)))
    return PatchTrigger("image", _nested(pixels), _nested(mask), _check_position(position), margin)


@TRIGGERS.register("blend")
def make_blend(channels: int, *, image_size: int, alpha: float = 0.2, path: str | None = None, seed: int = 0):
    if not 0 < alpha < 1:
        raise ConfigError(f"blend alpha must be in (0, 1), got {alpha}")
    if path is None:
        gen = torch.Generator().manual_seed(seed)
        pattern = torch.rand(channels, image_size, image_size, generator=gen)
    else:
        pattern, _mask = read_image(path, channels, (image_size, image_size))
    return BlendTrigger(_nested(pattern), float(alpha))


def make_trigger(kind: str, channels: int, image_size: int, **options: Any) -> Trigger:
    """Build a trigger by kind. `kind` may be `image:PATH` (shorthand for kind image with that path)."""
    if kind.startswith("image:"):
        kind, options = "image", {**options, "path": kind.split(":", 1)[1]}
    factory = TRIGGERS.get(kind)
    options = {k: v for k, v in options.items() if v is not None}
    allowed = set(inspect.signature(factory).parameters) - {"channels", "image_size"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"trigger kind {kind!r} does not take {unknown}; it takes {sorted(allowed)}")
    return factory(channels, image_size=image_size, **options)


def trigger_from_dict(data: dict[str, Any]) -> Trigger:
    """Rebuild a trigger from its JSON form (an attack spec). Validates shapes."""
    try:
        kind = data["kind"]
        if kind == "blend":
            trig: Trigger = BlendTrigger(_to_tuple(data["pattern"]), float(data["alpha"]))
            torch.tensor(trig.pattern)
            return trig
        TRIGGERS.get(kind)  # unknown kinds: ConfigError with "did you mean"
        pos = data.get("position", "bottom-right")
        trig = PatchTrigger(kind, _to_tuple(data["patch"]), _to_tuple(data["mask"]),
                            _check_position(tuple(pos) if isinstance(pos, list) else pos), int(data.get("margin", 1)))
        p, m = torch.tensor(trig.patch), torch.tensor(trig.mask)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"trigger description is malformed ({exc!r}); regenerate the attack spec") from None
    if p.ndim != 3 or m.ndim != 2 or p.shape[-2:] != m.shape:
        raise ConfigError(f"trigger patch {list(p.shape)} and mask {list(m.shape)} do not match")
    return trig

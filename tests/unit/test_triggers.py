import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from backdoor_arena.errors import ConfigError, IncompatibleError
from backdoor_arena.triggers import TRIGGERS, blend, make_trigger, place, stamp, trigger_from_dict


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.sampled_from([1, 3]), side=st.integers(6, 20), h=st.integers(1, 5),
       w=st.integers(1, 5), data=st.data())
def test_stamp_changes_only_the_masked_region(n, c, side, h, w, data):
    top = data.draw(st.integers(0, side - h))
    left = data.draw(st.integers(0, side - w))
    x = torch.rand(n, c, side, side)
    patch, mask = torch.rand(c, h, w), (torch.rand(h, w) > 0.5).float()
    before = x.clone()
    out = stamp(x, patch, mask, top, left)
    assert torch.equal(x, before)  # pure: the input is untouched
    changed = torch.zeros(side, side, dtype=torch.bool)
    changed[top : top + h, left : left + w] = mask.bool()
    assert torch.equal(out[..., ~changed], x[..., ~changed])
    assert torch.allclose(out[:, :, top : top + h, left : left + w][..., mask.bool()],
                          patch[:, mask.bool()].expand(n, -1, -1))


@settings(max_examples=30, deadline=None)
@given(alpha=st.floats(0.01, 0.99), c=st.sampled_from([1, 3]))
def test_blend_is_the_convex_mix(alpha, c):
    x, p = torch.rand(2, c, 8, 8), torch.rand(c, 8, 8)
    assert torch.allclose(blend(x, p, alpha), (1 - alpha) * x + alpha * p, atol=1e-6)


def test_named_and_negative_positions():
    assert place("bottom-right", 3, 3, 28, 28, 1) == (24, 24)
    assert place("top-left", 3, 3, 28, 28, 0) == (0, 0)
    assert place("bottom-center", 4, 4, 32, 32, 2) == (26, 14)
    assert place((-1, -1), 3, 3, 28, 28, 0) == (25, 25)
    assert place((5, 6), 3, 3, 28, 28, 0) == (5, 6)


def test_trigger_kinds_paint_what_they_say():
    x = torch.zeros(1, 1, 28, 28)
    pix = make_trigger("pixel", 1, 28).apply(x)
    assert pix.sum() == 1 and pix[0, 0, 26, 26] == 1
    sq = make_trigger("square", 1, 28, size=4).apply(x)
    assert sq.sum() == 16 and sq[0, 0, 23:27, 23:27].min() == 1
    pat = make_trigger("pattern", 1, 28, size=3).apply(torch.ones(1, 1, 28, 28))
    assert pat[0, 0, 24:27, 24:27].tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    yellow = make_trigger("square", 3, 32, size=2, color="yellow", position=(20, 10), margin=0).apply(
        torch.zeros(1, 3, 32, 32))
    assert yellow[0, :, 20, 10].tolist() == [1.0, 1.0, 0.0] and yellow.sum() == 8
    noise = make_trigger("blend", 3, 32, alpha=0.1, seed=3)
    assert noise == make_trigger("blend", 3, 32, alpha=0.1, seed=3)  # seeded pattern
    assert noise != make_trigger("blend", 3, 32, alpha=0.1, seed=4)


def test_image_trigger_uses_alpha_as_mask(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))  # transparent corner
    path = tmp_path / "t.png"
    img.save(path)
    trig = make_trigger(f"image:{path}", 3, 16, position="top-left", margin=0)
    out = trig.apply(torch.full((1, 3, 16, 16), 0.5))
    assert out[0, :, 0, 0].tolist() == [0.5, 0.5, 0.5]  # transparent: untouched
    assert out[0, :, 1, 1].tolist() == [1.0, 0.0, 0.0]
    assert trigger_from_dict(trig.to_dict()) == trig


@pytest.mark.parametrize("kind", ["pixel", "square", "pattern", "blend", "hollow-square", "x"])
def test_json_round_trip(kind):
    trig = make_trigger(kind, 3, 16)
    again = trigger_from_dict(trig.to_dict())
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(again.apply(x), trig.apply(x))


def test_bad_trigger_arguments(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'square'"):
        make_trigger("squar", 1, 28)
    with pytest.raises(ConfigError, match="unknown colour"):
        make_trigger("square", 1, 28, color="mauve")
    with pytest.raises(ConfigError, match="position"):
        make_trigger("square", 1, 28, position="middle-ish")
    with pytest.raises(ConfigError, match="does not take"):
        make_trigger("pixel", 1, 28, alpha=0.5)
    with pytest.raises(ConfigError, match="alpha"):
        make_trigger("blend", 1, 28, alpha=1.5)
    with pytest.raises(ConfigError, match="does not exist"):
        make_trigger(f"image:{tmp_path / 'none.png'}", 1, 28)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="is not a PNG, JPEG"):
        make_trigger(f"image:{tmp_path / 'bad.png'}", 1, 28)
    with pytest.raises(ConfigError, match="does not fit the 28x28 images"):
        make_trigger("square", 1, 28, size=10, position=(25, 25))
    with pytest.raises(IncompatibleError, match="does not fit"):  # built for 28x28, applied to 8x8
        make_trigger("square", 1, 28, size=10, position=(5, 5)).apply(torch.zeros(1, 1, 8, 8))
    with pytest.raises(IncompatibleError, match="float image batches"):
        make_trigger("pixel", 1, 28).apply(torch.zeros(1, 28, 28))
    with pytest.raises(ConfigError, match="patch: a required key is missing"):
        trigger_from_dict({"kind": "square"})


def test_registry_lists_kinds():
    assert set(TRIGGERS.names()) == {"pixel", "square", "pattern", "image", "blend", "hollow-square", "x", "warp",
                                     "sinusoid", "perturbation"}


def test_a_new_trigger_kind_plugs_in_by_registration_alone():
    from dataclasses import dataclass
    from typing import ClassVar

    from backdoor_arena.attacks import attack_from_spec, make_attack

    @dataclass(frozen=True)
    class Stripe:
        """A toy kind: one bright row."""

        row: int
        kind: ClassVar[str] = "stripe"

        def apply(self, x):
            out = x.clone()
            out[:, :, self.row] = 1.0
            return out

        def to_dict(self):
            return {"kind": self.kind, "row": self.row}

        @classmethod
        def from_dict(cls, data):
            return cls(int(data["row"]))

        @classmethod
        def build(cls, channels, *, row=0, image_size=0):
            return cls(row)

    with TRIGGERS.temporarily("stripe", Stripe):
        assert make_trigger("stripe", 1, 12, row=3) == Stripe(3)
        with pytest.raises(ConfigError, match="does not take"):
            make_trigger("stripe", 1, 12, size=3)
        atk = make_attack("badnets", num_classes=4, channels=1, image_size=12, trigger="stripe",
                          trigger_options={"row": 5})
        assert attack_from_spec(atk.to_spec()) == atk and trigger_from_dict({"kind": "stripe", "row": 2}) == Stripe(2)
    with pytest.raises(ConfigError, match="unknown trigger kind"):
        trigger_from_dict({"kind": "stripe", "row": 2})


def test_kind_colon_path_shorthand_and_data_uris(tmp_path):
    from backdoor_arena.triggers import EXAMPLE_IMAGE, BlendTrigger, ImageTrigger

    Image.new("RGB", (16, 16), (0, 255, 0)).save(tmp_path / "g.png")
    blended = make_trigger(f"blend:{tmp_path / 'g.png'}", 3, 16, alpha=0.5)
    assert isinstance(blended, BlendTrigger) and blended == make_trigger("blend", 3, 16, alpha=0.5,
                                                                         path=str(tmp_path / "g.png"))
    out = blended.apply(torch.zeros(1, 3, 16, 16))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 0.5, 0.0]))
    with pytest.raises(ConfigError, match="takes no path"):
        make_trigger(f"square:{tmp_path / 'g.png'}", 3, 16)
    inline = make_trigger("image", 3, 16, path=EXAMPLE_IMAGE, position="top-left", margin=0)
    assert isinstance(inline, ImageTrigger)
    x = inline.apply(torch.zeros(1, 3, 16, 16))
    assert torch.allclose(x[0, :, 1, 1], torch.tensor([10, 200, 10]) / 255, atol=1e-6)  # the green centre
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([200, 10, 10]) / 255, atol=1e-6)
    with pytest.raises(ConfigError, match="base64"):
        make_trigger("image", 3, 16, path="data:image/png;base64,%%%")
    with pytest.raises(ConfigError, match="margin"):
        make_trigger("square", 3, 16, margin=-2)


# --------------------------------------------------------------------------- hollow square and X
def _painted(kind: str, side: int = 28, **options) -> torch.Tensor:
    """The [H, W] boolean map of the pixels a trigger paints on a black image."""
    return make_trigger(kind, 1, side, **options).apply(torch.zeros(1, 1, side, side))[0, 0] > 0


@settings(max_examples=40, deadline=None)
@given(size=st.integers(3, 12), top=st.integers(0, 16), left=st.integers(0, 16))
def test_hollow_square_is_a_one_pixel_outline(size, top, left):
    on = _painted("hollow-square", size=size, position=(top, left), margin=0)
    box = torch.zeros(28, 28, dtype=torch.bool)
    box[top : top + size, left : left + size] = True
    inner = torch.zeros(28, 28, dtype=torch.bool)
    inner[top + 1 : top + size - 1, left + 1 : left + size - 1] = True
    assert torch.equal(on, box & ~inner)  # the border of the box, nothing inside, nothing outside
    assert int(on.sum()) == 4 * size - 4


@settings(max_examples=40, deadline=None)
@given(size=st.integers(3, 12), top=st.integers(0, 16), left=st.integers(0, 16))
def test_x_is_the_two_diagonals(size, top, left):
    on = _painted("x", size=size, position=(top, left), margin=0)
    expected = torch.zeros(28, 28, dtype=torch.bool)
    for i in range(size):
        expected[top + i, left + i] = expected[top + i, left + size - 1 - i] = True
    assert torch.equal(on, expected)
    assert int(on.sum()) == 2 * size - size % 2  # odd sides share the centre pixel


def test_outline_kinds_keep_the_image_elsewhere_and_take_colour_and_position():
    x = torch.full((2, 3, 16, 16), 0.25)
    hollow = make_trigger("hollow-square", 3, 16, size=4, color="red", position="top-left", margin=1).apply(x)
    assert hollow[0, :, 1, 1].tolist() == [1.0, 0.0, 0.0] and hollow[0, :, 2, 2].tolist() == [0.25] * 3  # hole
    assert torch.equal(hollow[:, :, 6:], x[:, :, 6:])  # nothing painted below the outline
    cross = make_trigger("x", 3, 16, size=5, color=(0.0, 0.5, 1.0), position="center").apply(x)
    top, left = (16 - 5) // 2, (16 - 5) // 2
    assert cross[1, :, top + 2, left + 2].tolist() == [0.0, 0.5, 1.0]  # the centre
    assert cross[1, :, top, left + 1].tolist() == [0.25] * 3  # off the diagonals
    # the defaults: a 6x6 outline and a 5x5 X, bottom-right, white
    assert int(_painted("hollow-square").sum()) == 20 and bool(_painted("hollow-square")[26, 26])
    assert int(_painted("x").sum()) == 9 and bool(_painted("x")[22, 22]) and bool(_painted("x")[26, 22])


@pytest.mark.parametrize("kind", ["hollow-square", "x"])
def test_outline_kinds_reject_bad_options_and_round_trip_through_an_attack_spec(kind):
    from backdoor_arena.attacks import attack_from_spec, make_attack

    for bad, message in [({"size": 2}, "at least 3"), ({"size": 29}, "size"), ({"color": "mauve"}, "unknown colour"),
                         ({"size": 8, "position": (24, 24)}, "does not fit")]:
        with pytest.raises(ConfigError, match=message):
            make_trigger(kind, 1, 28, **bad)
    atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, trigger=kind,
                      trigger_options={"size": 5, "position": "center"}, target=3)
    again = attack_from_spec(json.loads(json.dumps(atk.to_spec())))
    assert again == atk and again.trigger.kind == kind
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(again.apply_trigger(x), atk.apply_trigger(x))

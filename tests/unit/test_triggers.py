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


@pytest.mark.parametrize("kind", ["pixel", "square", "pattern", "blend"])
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
    with pytest.raises(ConfigError, match="cannot be read"):
        make_trigger(f"image:{tmp_path / 'bad.png'}", 1, 28)
    with pytest.raises(IncompatibleError, match="does not fit"):
        make_trigger("square", 1, 28, size=10, position=(25, 25)).apply(torch.zeros(1, 1, 28, 28))
    with pytest.raises(IncompatibleError, match="float image batches"):
        make_trigger("pixel", 1, 28).apply(torch.zeros(1, 28, 28))
    with pytest.raises(ConfigError, match="malformed"):
        trigger_from_dict({"kind": "square"})


def test_registry_lists_kinds():
    assert set(TRIGGERS.names()) == {"pixel", "square", "pattern", "image", "blend"}

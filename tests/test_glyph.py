"""The glyph substrate builder and its table loader (.npy, .safetensors)."""

import math
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from mlx_grow.substrate import glyph
from mlx_grow.substrate.files import load_table_file
from mlx_grow.substrate.glyph import (
    FontNotFoundError,
    augment_constants,
    find_font,
    glyph_bits,
    glyph_table,
    load_font,
    polar_snake,
    render_token,
    script_class,
    token_bits,
)

UNIFONT = "/usr/share/fonts/opentype/unifont/unifont.otf"
needs_unifont = pytest.mark.skipif(
    not Path(UNIFONT).is_file(), reason=f"GNU Unifont not installed at {UNIFONT} (apt-get install fonts-unifont)"
)


def author_bits(text, font, cell=32, easy=(4, 2, 0.01), complex_=(0, 0, 0.001)):
    """The published builder's steps, literally: global RNGs reseeded with 42
    for every image, lambda threshold, bilinear resize (nearest for 1-bit),
    per-pixel polar-snake read-out."""
    img = Image.new("L", (cell * len(text), cell), color=255)
    draw = ImageDraw.Draw(img)
    for i, ch in enumerate(text):
        try:
            bbox = font.getbbox(ch)
            w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
            draw.text((i * cell + (cell - w) // 2, (cell - h) // 2 - bbox[1]), ch, fill=0, font=font)
        except Exception:
            pass
    is_complex = script_class(text) == "complex"
    random.seed(42)
    np.random.seed(42)
    max_rot, max_shift, noise = complex_ if is_complex else easy
    img = img.rotate(random.uniform(-max_rot, max_rot), expand=0, fillcolor=255)
    dx, dy = random.randint(-max_shift, max_shift), random.randint(-max_shift, max_shift)
    shifted = Image.new("L", img.size, color=255)
    shifted.paste(img, (dx, dy))
    arr = np.array(shifted)
    arr[np.random.rand(*arr.shape) < noise] = 0
    img = Image.fromarray(arr)
    if not is_complex:
        img = img.filter(ImageFilter.GaussianBlur(radius=0.5))
    bw = img.point(lambda p: 0 if p < 128 else 255, mode="1")
    if bw.size != (cell, cell):
        bw = bw.resize((cell, cell), Image.BILINEAR)
    px, c = bw.load(), cell / 2
    pixels = [(x, y) for y in range(cell) for x in range(cell)]
    coords = sorted((math.hypot(x - c, y - c), math.atan2(y - c, x - c), x, y) for x, y in pixels)
    return np.array([0 if px[x, y] else 1 for _, _, x, y in coords], np.uint8)


@pytest.fixture(scope="module")
def font():
    return load_font(UNIFONT, 32)


@pytest.mark.parametrize("cell", [32, 64])
def test_polar_snake_is_a_permutation_from_the_centre(cell):
    perm = polar_snake(cell)
    assert sorted(perm.tolist()) == list(range(cell * cell))
    c = cell // 2
    assert perm[0] == c * cell + c  # radius 0
    assert set(perm[1:5].tolist()) == {c * cell + c - 1, c * cell + c + 1, (c - 1) * cell + c, (c + 1) * cell + c}


def test_script_class():
    for s in ("hello", "Привет", "Ωμέγα", "Հայ", "ñ", "<unused_7>", ""):
        assert script_class(s) == "easy", s
    for s in ("中", "a中", "日本", "عربي", "한", "\u0600", "\u0250"):
        assert script_class(s) == "complex", s


def test_augment_constants_match_the_papers_and_leave_global_rng_alone():
    r_state, np_state = random.getstate(), np.random.get_state()
    angle, dx, dy, mask = augment_constants("easy", 32, 32, "2-3")
    assert (round(angle, 3), dx, dy) == (1.115, -2, 0)
    angle, dx, dy, _ = augment_constants("easy", 64, 32, "max")
    assert (round(angle, 3), dx, dy) == (1.952, -3, 2)
    assert augment_constants("complex", 32, 32, "2-3")[:3] == (0.0, 0, 0)
    assert np.array_equal(mask, np.random.RandomState(42).rand(32, 32) < 0.01)
    assert random.getstate() == r_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))
    with pytest.raises(ValueError, match="augmentation"):
        augment_constants("easy", 32, 32, "nope")


@needs_unifont
@pytest.mark.parametrize("a,b", [("a", "b"), ("я", "ж"), ("中", "文")])
def test_different_characters_draw_differently(font, a, b):
    # Pillow's default font draws Cyrillic and CJK as the same box: this must catch it
    ra, rb = np.array(render_token(a, font)), np.array(render_token(b, font))
    assert (ra < 128).sum() > 20 and (rb < 128).sum() > 20
    assert not np.array_equal(ra, rb)
    assert not np.array_equal(token_bits(a, font), token_bits(b, font))


@needs_unifont
def test_render_token_layout(font):
    img = render_token("ab", font)
    assert img.mode == "L" and img.size == (64, 32)
    both = np.array(img)
    assert np.array_equal(both[:, :32], np.array(render_token("a", font)))
    assert render_token("", font).size == (32, 32)


@needs_unifont
def test_a_character_that_fails_to_draw_leaves_its_cell_white():
    class Flaky(type(load_font(UNIFONT, 32))):
        def getbbox(self, text, *a, **k):
            if text == "x":
                raise OSError("no glyph")
            return super().getbbox(text, *a, **k)

    flaky = Flaky(UNIFONT, 32, layout_engine=load_font(UNIFONT, 32).layout_engine)
    img = np.array(render_token("axb", flaky))
    assert (img[:, 32:64] == 255).all()
    assert np.array_equal(img[:, :32], np.array(render_token("a", flaky)))
    assert (img[:, 64:] < 128).any()


@needs_unifont
def test_cached_augmentation_equals_the_slow_per_image_reseeding(font):
    tokens = ["A", "BC", "hello", "я", "при", "中", "中文", "ab中", "<unused_40000>", "\u0301", "\n", " "]
    fast = glyph_bits(tokens, UNIFONT)
    for t, row in zip(tokens, fast):
        assert np.array_equal(row, author_bits(t, font)), t
    fast = glyph_bits(tokens[:6], UNIFONT, augment="max")
    for t, row in zip(tokens[:6], fast):
        assert np.array_equal(row, author_bits(t, font, easy=(7, 3, 0.03))), t


@needs_unifont
def test_abs_variant_is_64_px():
    bits = glyph_bits(["a", "ab", "中"], UNIFONT, font_size=64, augment="max")
    assert bits.shape == (3, 4096) and bits.dtype == np.uint8
    f64 = load_font(UNIFONT, 64)
    assert np.array_equal(bits[1], author_bits("ab", f64, 64, easy=(7, 3, 0.03)))


# renders the whole glyph table twice (~9 s): in the slow set
@pytest.mark.slow
@needs_unifont
def test_table_rows_unit_norm_and_builds_bit_identical():
    strings = [chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0x430, 0x450)]
    strings += [chr(c) for c in range(0x4E00, 0x4E00 + 150)] + ["<pad>", "<s>", "th", "the", "ing"]
    r_state = random.getstate()
    a = glyph_table(strings, 64, font=UNIFONT)
    b = glyph_table(strings, 64, font=UNIFONT)
    assert random.getstate() == r_state
    assert a.shape == (len(strings), 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert a.tobytes() == b.tobytes()
    assert glyph_table(strings[:50], 4096, font=UNIFONT).shape == (50, 1024)  # at most cell² columns


def test_missing_font_says_how_to_get_one(monkeypatch, tmp_path):
    with pytest.raises(FontNotFoundError) as e:
        find_font(tmp_path / "nope.ttf")
    assert "fonts-unifont" in str(e.value) and "--font" in str(e.value)
    monkeypatch.setattr(glyph, "UNIFONT_PATHS", (str(tmp_path / "none.otf"),))
    with pytest.raises(FontNotFoundError) as e:
        glyph_bits(["a"])
    assert "fonts-unifont" in str(e.value) and "--font" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_table_file_npy_and_safetensors(tmp_path):
    from safetensors.numpy import save_file

    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    np.save(tmp_path / "t.npy", x)
    save_file({"table": x}, str(tmp_path / "t.safetensors"))
    assert np.array_equal(load_table_file(tmp_path / "t.npy"), x)
    assert np.array_equal(load_table_file(tmp_path / "t.safetensors"), x)

"""The glyph substrate: each token's string rendered in GNU Unifont, given a
fixed "augmentation", squeezed to one cell, read in polar-snake order and
projected with PCA, following the papers' recipe step by step.

Every step follows the papers' published builder (AVBochkov/PGT), so two
machines with the same font draw the same bits. Text is laid out with
Pillow's BASIC engine: each character is drawn on its own, so no shaping is
needed, the result does not depend on whether Pillow has libraqm, and (as in
the author's run, which reported no drawing errors) line-separator characters
such as "\\n" do not raise.
"""

import math
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mlx_grow.base import UserError, brief

UNIFONT_PATHS = (
    "/usr/share/fonts/opentype/unifont/unifont.otf",
    "/usr/share/fonts/truetype/unifont/unifont.ttf",
    "/usr/share/fonts/unifont/unifont.otf",
    "/usr/share/fonts/unifont/unifont.ttf",
    "/usr/share/fonts/gnu-free/unifont.ttf",
    "/usr/local/share/fonts/unifont.otf",
    "/usr/local/share/fonts/unifont.ttf",
    "/opt/homebrew/share/fonts/unifont.otf",
    "~/.local/share/fonts/unifont.otf",
    "~/.local/share/fonts/unifont.ttf",
    "~/Library/Fonts/unifont.otf",
    "~/Library/Fonts/unifont.ttf",
)

# Per augmentation table and script class:
# (max rotation in degrees, max shift in pixels, share of salt-noise pixels, blur)
AUGMENT = {
    "2-3": {"easy": (4, 2, 0.01, True), "complex": (0, 0, 0.001, False)},
    "max": {"easy": (7, 3, 0.03, True), "complex": (0, 0, 0.001, False)},
}

# Pixel < 128 -> black (0), else white (255); used to make the 1-bit image.
THRESHOLD = [0] * 128 + [255] * 128


class FontNotFoundError(FileNotFoundError):
    pass


def find_font(font=None) -> str:
    """The font file to render with: `font` if given, else GNU Unifont from
    the usual places. Never falls back to Pillow's Latin-only default font."""
    if font is not None:
        path = Path(font).expanduser()
        if path.is_file():
            return str(path)
        raise FontNotFoundError(f"font file {font} does not exist. {_font_hint()}")
    for cand in UNIFONT_PATHS:
        path = Path(cand).expanduser()
        if path.is_file():
            return str(path)
    raise FontNotFoundError(f"GNU Unifont was not found. {_font_hint()}")


def _font_hint() -> str:
    return (
        "The glyph substrate needs a font that covers every script of the vocabulary: "
        "install Unifont (`apt-get install fonts-unifont` on Debian/Ubuntu), or pass a font "
        "file with `--font PATH` (on a Mac, point at a font file that covers the scripts, "
        "e.g. a downloaded unifont .otf/.ttf or Arial Unicode)."
    )


@lru_cache(maxsize=8)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def script_class(text: str) -> str:
    """'easy' if every character is Latin (to Latin Extended-B), Greek,
    Cyrillic (with Supplement) or Armenian; otherwise 'complex'."""
    for ch in text:
        c = ord(ch)
        if not (c <= 0x024F or 0x0370 <= c <= 0x058F):
            return "complex"
    return "easy"


def render_token(text: str, font, cell: int = 32) -> Image.Image:
    """Step 1: white "L" canvas cell x (cell * len), each character drawn in
    black centred in its own cell by the font's bounding box. A character
    whose drawing raises is skipped. An empty string gives one blank cell."""
    if not isinstance(font, ImageFont.FreeTypeFont):
        font = load_font(find_font(font), cell)
    img = Image.new("L", (cell * max(len(text), 1), cell), 255)
    draw = ImageDraw.Draw(img)
    for i, ch in enumerate(text):
        try:
            left, top, right, bottom = font.getbbox(ch)
            x = cell * i + (cell - (right - left)) // 2
            y = (cell - (bottom - top)) // 2 - top
            draw.text((x, y), ch, fill=0, font=font)
        except Exception:  # as the builder: leave the cell white
            pass
    return img


@lru_cache(maxsize=None)
def augment_constants(cls: str, width: int, height: int, augment: str = "2-3"):
    """The builder reseeds Python's and NumPy's RNGs with 42 for every image,
    so angle, shift and noise mask are constants per (class, image size).
    Private generators reproduce those draws without touching global state."""
    max_rot, max_shift, noise, _ = _table(augment)[cls]
    rnd = random.Random(42)
    angle = rnd.uniform(-max_rot, max_rot)
    dx = rnd.randint(-max_shift, max_shift)
    dy = rnd.randint(-max_shift, max_shift)
    mask = np.random.RandomState(42).rand(height, width) < noise
    mask.setflags(write=False)
    return angle, dx, dy, mask


def _table(augment: str) -> dict:
    if augment not in AUGMENT:
        raise UserError(f"unknown glyph augmentation {brief(augment)}; use one of {', '.join(AUGMENT)}")
    return AUGMENT[augment]


def augment_image(img: Image.Image, text: str, augment: str = "2-3") -> Image.Image:
    """Step 2: rotate, shift, salt noise, blur (easy scripts), threshold -> mode "1"."""
    cls = script_class(text)
    blur = _table(augment)[cls][3]
    angle, dx, dy, mask = augment_constants(cls, img.width, img.height, augment)
    img = img.rotate(angle, expand=0, fillcolor=255)  # nearest, about the centre
    if dx or dy:
        shifted = Image.new("L", img.size, 255)
        shifted.paste(img, (dx, dy))
        img = shifted
    arr = np.array(img)
    arr[mask] = 0
    img = Image.fromarray(arr)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(radius=0.5))
    return img.point(THRESHOLD, "1")


@lru_cache(maxsize=None)
def polar_snake(cell: int = 32) -> np.ndarray:
    """Step 4: row-major pixel indices sorted by (radius, angle, x, y) about
    the centre (cell/2, cell/2). One fixed permutation for every token."""
    c = cell / 2
    coords = sorted(
        (math.hypot(x - c, y - c), math.atan2(y - c, x - c), x, y) for y in range(cell) for x in range(cell)
    )
    perm = np.array([y * cell + x for _, _, x, y in coords], dtype=np.int64)
    perm.setflags(write=False)
    return perm


def token_bits(text: str, font, cell: int = 32, augment: str = "2-3") -> np.ndarray:
    """Steps 1-4 for one token: [cell*cell] uint8, 1 = ink."""
    img = augment_image(render_token(text, font, cell), text, augment)
    if img.size != (cell, cell):  # step 3: squeeze (a 1-bit image resizes nearest)
        img = img.resize((cell, cell), Image.Resampling.NEAREST)
    ink = ~np.array(img)  # mode "1" reads as bool, True = white
    return ink.reshape(-1)[polar_snake(cell)].astype(np.uint8)


def glyph_bits(
    strings, font=None, cell=None, font_size: int = 32, augment: str = "2-3", progress: bool = False
) -> np.ndarray:
    """The [V, cell*cell] uint8 bit table of the token strings (cell = font_size).
    About 0.1 ms a single-character token, so one process is enough."""
    strings = [str(s) for s in strings]
    cell = int(cell or font_size)
    if cell != font_size:
        raise UserError(f"the glyph recipe draws font size {font_size} in {font_size}-px cells, got cell {cell}")
    _table(augment)
    font = load_font(find_font(font), cell)
    out = np.empty((len(strings), cell * cell), np.uint8)
    for i, s in enumerate(_track(strings, progress)):
        out[i] = token_bits(s, font, cell, augment)
    return out


def _track(items, progress):
    if not progress:
        yield from items
        return
    from rich.progress import MofNCompleteColumn

    from mlx_grow.io.progress import rich_bar

    with rich_bar(MofNCompleteColumn()) as bar:
        yield from bar.track(items, description="rendering glyphs", update_period=0.5)


def glyph_table(
    token_strings, d_model: int, font=None, font_size: int = 32, augment: str = "2-3", progress: bool = False
) -> np.ndarray:
    """The glyph substrate [V, min(d_model, font_size**2)] float32: bits ->
    mean-centred PCA -> L2-normalised rows (step 5)."""
    from mlx_grow.substrate.codes import pca_l2

    bits = glyph_bits(token_strings, font, font_size, font_size, augment, progress)
    return pca_l2(bits, min(int(d_model), bits.shape[1]))

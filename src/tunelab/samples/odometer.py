"""Odometer-like images drawn with PIL, and the car_insurance sample spreadsheet.

The smoke profile cannot ship real dashboard photos, so it draws its own: the
digits of a known mileage in an odometer window on a dashboard-like background
(a dark panel with gauge arcs and tick marks, an "ODO" and a "km" label), in
one of several fonts shipped with matplotlib (DejaVu, STIX, Computer Modern:
no system fonts, so the images are the same on every machine), at varied
sizes, offsets, colours, blur and pixel noise. What is simplified: the
display is always upright and seen straight on, digits sit in equal slots,
and there is no glare, dirt or perspective. The images are small on purpose:
a tiny vision tower reads large, clear digits in a few image tokens.

``plain_card`` draws a number on a plain light card: the "generic OCR" images
the tiny base model is pretrained on (the base stage), which stand in for the
reading skill a real pretrained VLM brings. The scenario's dashboards are a
different look, so the LoRA has a domain and an answer format to learn.

``write_car_insurance_samples`` writes data/raw/car_insurance/: JPEG images,
an .xlsx whose rows reference them by relative path, a few rows whose picture
is embedded in the sheet instead, and rows the prepare stage must reject (a
missing file, a path outside the data folder, an unreadable file, an empty
answer, an oversized image). Regenerate with ``python -m tunelab.samples.odometer``.
"""

from __future__ import annotations

import functools
import io
import math
import random
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_FILES = (
    "DejaVuSans-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif-Bold.ttf",
    "STIXGeneralBol.ttf",
    "cmss10.ttf",
)
PROMPTS = (
    "请读出仪表盘上的里程数。",
    "这张车辆照片里的里程表读数是多少？",
    "请识别图中的总里程。",
    "车辆当前行驶了多少公里？",
)


def font_paths() -> list[Path]:
    """The TrueType files used for digits (shipped inside matplotlib)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [folder / name for name in FONT_FILES]


def format_answer(mileage: int) -> str:
    """The expected answer for a reading: 里程数：12,345 公里."""
    return f"里程数：{mileage:,} 公里"


def random_mileage(rng: random.Random) -> int:
    """A mileage of 5 or 6 digits (10,000 to 999,999 km)."""
    return rng.randint(10_000, 999_999)


@functools.lru_cache(maxsize=64)
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _font(rng: random.Random, size: int) -> ImageFont.FreeTypeFont:
    return _load_font(str(rng.choice(font_paths())), size)


def _noise(img: Image.Image, rng: random.Random, sigma: float) -> Image.Image:
    """Add seeded Gaussian pixel noise of standard deviation ``sigma`` (0-255 scale)."""
    import numpy as np

    if sigma <= 0:
        return img
    gen = np.random.default_rng(rng.getrandbits(32))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + gen.normal(0.0, sigma, size=arr.shape[:2])[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


CELL = 28  # pixels per image token of Qwen2.5-VL (14-pixel patches, merged 2x2)
SLOTS = 6  # digits on the display, leading zeros shown as on a mechanical odometer


def _slot_digits(
    draw: ImageDraw.ImageDraw,
    text: str,
    x0: int,
    y_mid: float,
    font: ImageFont.FreeTypeFont,
    ink: tuple[int, ...],
    rng: random.Random,
) -> None:
    """Draw ``text`` right-aligned in SLOTS cells of CELL pixels starting at x0."""
    for i, ch in enumerate(text.rjust(SLOTS)[-SLOTS:]):
        if ch == " ":
            continue
        box = draw.textbbox((0, 0), ch, font=font)
        cx = x0 + CELL * (i + 0.5)
        tx = cx - (box[0] + box[2]) / 2 + rng.uniform(-1.0, 1.0)
        ty = y_mid - (box[1] + box[3]) / 2 + rng.uniform(-1.0, 1.0)
        draw.text((tx, ty), ch, fill=ink, font=font)


def render_odometer(mileage: int, rng: random.Random) -> Image.Image:
    """A 224x84 dashboard-like picture whose odometer window shows ``mileage``.

    Layout on the 8x3 grid of 28-pixel cells the vision tower turns into tokens:
    the six digits sit in the middle row, one per cell (columns 1-6); labels,
    gauge arcs and the window frame fill the rest.
    """
    w, h = 8 * CELL, 3 * CELL
    base = tuple(rng.randint(8, 45) for _ in range(3))
    img = Image.new("RGB", (w, h), base)
    draw = ImageDraw.Draw(img)
    for y in range(h):  # vertical shading of the panel
        k = 1.0 + 0.5 * (y / h - 0.5)
        draw.line([(0, y), (w, y)], fill=tuple(min(255, int(c * k)) for c in base))
    for cx in (rng.randint(-CELL, 4), rng.randint(w - 4, w + CELL)):  # gauges at the sides
        r = rng.randint(h // 2, h)
        colour = tuple(rng.randint(90, 200) for _ in range(3))
        draw.arc([cx - r, h // 2 - r, cx + r, h // 2 + r], 0, 360, fill=colour, width=2)
        for a in range(0, 360, 20):
            x0 = cx + (r - 6) * math.cos(math.radians(a))
            y0 = h // 2 + (r - 6) * math.sin(math.radians(a))
            x1 = cx + r * math.cos(math.radians(a))
            y1 = h // 2 + r * math.sin(math.radians(a))
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=1)
    lcd = rng.random() < 0.3
    window = tuple(rng.randint(150, 200) for _ in range(3)) if lcd else (rng.randint(0, 20),) * 3
    ink = (
        (rng.randint(10, 50),) * 3
        if lcd
        else rng.choice([(240, 240, 240), (255, 190, 60), (120, 220, 255), (255, 255, 200)])
    )
    dx, dy = rng.randint(-2, 2), rng.randint(-2, 2)
    left, top = CELL + dx, CELL + dy
    draw.rounded_rectangle(
        [left - 3, top - 3, left + SLOTS * CELL + 3, top + CELL + 3],
        radius=4,
        fill=window,
        outline=(150, 150, 150),
        width=1,
    )
    small = ImageFont.truetype(str(font_paths()[0]), 10)
    label = (200, 200, 200)
    draw.text((left + rng.randint(0, 20), top - 17), "ODO", fill=label, font=small)
    draw.text((left + SLOTS * CELL - 18, top + CELL + 5), "km", fill=label, font=small)
    font = _font(rng, rng.randint(24, 30))
    _slot_digits(draw, f"{mileage:0{SLOTS}d}", left, top + CELL / 2, font, ink, rng)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.7)))
    return _noise(img, rng, rng.uniform(0, 16))


def plain_card(text: str, rng: random.Random) -> Image.Image:
    """``text`` (up to six digits) in dark ink on a plain light 224x84 card, same slots."""
    w, h = 8 * CELL, 3 * CELL
    img = Image.new("RGB", (w, h), tuple(rng.randint(190, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    ink = tuple(rng.randint(0, 80) for _ in range(3))
    dx, dy = rng.randint(-2, 2), rng.randint(-2, 2)
    _slot_digits(draw, text, CELL + dx, 1.5 * CELL + dy, _font(rng, rng.randint(24, 30)), ink, rng)
    return _noise(img, rng, rng.uniform(0, 8))


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def write_car_insurance_xlsx(
    path: Path,
    rows: list[dict[str, object]],
    columns: dict[str, str],
    embedded: dict[int, bytes] | None = None,
) -> None:
    """Write an .xlsx: a header row with ``columns`` names, then ``rows``.

    ``rows`` hold keys "image", "prompt", "answer" (values written as given,
    None leaves the cell empty); ``embedded`` maps a 0-based row index to
    image bytes anchored in that row's image cell (a picture in the sheet).
    Document timestamps are fixed so that the same rows give the same bytes.
    """
    from openpyxl import Workbook
    from openpyxl.drawing.image import Image as XLImage
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    ws = wb.active
    ws.title = "claims"
    keys = ["image", "prompt", "answer"]
    ws.append([columns[k] for k in keys])
    for row in rows:
        ws.append([row.get(k) for k in keys])
    image_col = get_column_letter(keys.index("image") + 1)
    for index, data in sorted((embedded or {}).items()):
        picture = XLImage(io.BytesIO(data))
        ws.add_image(picture, f"{image_col}{index + 2}")
    wb.properties.created = STAMP
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    wb.save(buf)
    path.write_bytes(_fixed_times(buf.getvalue()))


STAMP = datetime(2026, 1, 1)


def _fixed_times(xlsx: bytes) -> bytes:
    """The same workbook with fixed timestamps (zip entries, docProps modified time).

    openpyxl stamps the save time into both; fixing them makes the sample
    workbook reproducible byte for byte.
    """
    import re
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(xlsx)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = re.sub(
                    rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                    rb"\g<1>" + STAMP.strftime("%Y-%m-%dT%H:%M:%SZ").encode() + rb"\g<2>",
                    data,
                )
            fixed = zipfile.ZipInfo(info.filename, date_time=STAMP.timetuple()[:6])
            fixed.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(fixed, data)
    return out.getvalue()


SAMPLE_COLUMNS = {"image": "图片", "prompt": "问题", "answer": "标准答案"}


def write_car_insurance_samples(
    root: Path, seed: int = 20261130, n_path: int = 136, n_embedded: int = 8, quality: int = 50
) -> list[Path]:
    """Write <root>/car_insurance/{images/*, claims.xlsx}; return the written files.

    ``n_path`` rows reference a JPEG by relative path, ``n_embedded`` rows carry
    the picture in the sheet; five more rows are bad, one per reason the
    prepare stage drops a row for.
    """
    rng = random.Random(seed)
    folder = Path(root) / "car_insurance"
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    entries: list[tuple[dict[str, object], bytes | None]] = []
    for i in range(n_path + n_embedded):
        mileage = random_mileage(rng)
        data = jpeg_bytes(render_odometer(mileage, rng), quality)
        row: dict[str, object] = {"prompt": rng.choice(PROMPTS), "answer": format_answer(mileage)}
        if i < n_path:
            rel = f"images/odo_{i:04d}.jpg"
            (folder / rel).write_bytes(data)
            written.append(folder / rel)
            entries.append(({**row, "image": rel}, None))
        else:
            entries.append(({**row, "image": None}, data))
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    written.append(images / "corrupt.jpg")
    Image.new("1", (8000, 6000), 0).save(images / "oversized.png", optimize=True)  # 48 Mpx
    written.append(images / "oversized.png")
    bad = [
        {"image": "images/missing.jpg", "prompt": PROMPTS[0], "answer": format_answer(12_345)},
        {"image": "../outside.jpg", "prompt": PROMPTS[0], "answer": format_answer(23_456)},
        {"image": "images/corrupt.jpg", "prompt": PROMPTS[0], "answer": format_answer(34_567)},
        {"image": "images/odo_0000.jpg", "prompt": PROMPTS[0], "answer": "  "},
        {"image": "images/oversized.png", "prompt": PROMPTS[0], "answer": format_answer(45_678)},
    ]
    for k, row in enumerate(bad):
        entries.insert(11 + 23 * k, (row, None))
    rows = [row for row, _ in entries]
    embedded = {i: data for i, (_, data) in enumerate(entries) if data is not None}
    xlsx = folder / "claims.xlsx"
    write_car_insurance_xlsx(xlsx, rows, SAMPLE_COLUMNS, embedded)
    written.append(xlsx)
    return written


if __name__ == "__main__":
    for p in write_car_insurance_samples(Path("data/raw")):
        print(p)

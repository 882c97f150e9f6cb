"""Car insurance: an .xlsx of vehicle photos with expected answers -> VL chat records.

Each sheet row carries an image, a prompt and an expected answer (column
names in params). The image is a path relative to ``image_dir`` (Windows
separators, ``images\\x.jpg``, read as ``/``), or a picture embedded in the
sheet and anchored to the row (openpyxl reads both); a non-empty path wins over
an embedded picture. Every row is checked, and a
bad row is dropped and counted per reason in the data card, or, in strict
mode, stops the stage with one line naming the row:

- ``missing_image``: no path and no picture, or the file does not exist;
- ``path_escape``: an absolute path, or one that leaves the data folder
  (``..``, or a symlink pointing outside it);
- ``oversized_image``: more bytes than ``max_file_bytes``, or more pixels than
  ``max_source_pixels``, checked from the header before decoding; PIL's own
  decompression-bomb limit is set to the same value while decoding;
- ``unreadable_image``: not an image PIL can decode completely;
- ``empty_answer``: the expected answer is blank;
- ``uncomputed_formula``: a cell holds a formula whose value was never computed
  (a workbook written by a program, not saved by a spreadsheet application):
  openpyxl reads no value, and the row is not taken for empty.

Blank rows are skipped without counting. An empty prompt cell takes
``default_prompt``. Images are turned upright (EXIF orientation), converted
to RGB and resized, keeping the aspect ratio, into [min_pixels, max_pixels]
(width x height), then stored as PNG next to the records, which reference
them by relative path: ``{"messages": [system?, user: [text, image],
assistant: text], "images": ["images/row_00002.png"], "meta": {...}}``. The
question comes before the picture, so the answer always starts at the same
distance from the image tokens whatever the question's length (a small model
learns to read a fixed-offset row much sooner; large ones do not mind).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from pathlib import Path
from typing import Any

from tunelab.config.prepare import CarInsurancePrepareParams, ImageCheckParams
from tunelab.data.common import DataCard
from tunelab.errors import TunelabError

REASONS = {
    "missing_image": "no image (no path and no picture in the row, or the file does not exist)",
    "path_escape": "the image path leaves the data folder",
    "oversized_image": "the image is too large (decompression-bomb guard)",
    "unreadable_image": "the image cannot be decoded",
    "empty_answer": "the expected answer is empty",
    "uncomputed_formula": "a formula cell has no computed value (open and save the workbook in a spreadsheet application)",
}
_BYTESIO = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class BadRow(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{REASONS[reason]} ({detail})" if detail else REASONS[reason])


def bounded_size(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) scaled, aspect kept, so that width x height lies in the bounds."""
    pixels = width * height
    if min_pixels <= pixels <= max_pixels:
        return width, height
    scale = math.sqrt((max_pixels if pixels > max_pixels else min_pixels) / pixels)
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    if pixels < min_pixels:  # rounding down may leave it just below the floor
        while w * h < min_pixels:
            w, h = w + 1, max(1, round((w + 1) * height / width))
    return w, h


def load_image(data: bytes, check: ImageCheckParams) -> tuple[Any, tuple[int, int]]:
    """Decode, orient, convert and bound one image; raise BadRow when it is unusable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > check.max_file_bytes:
        raise BadRow(
            "oversized_image", f"{len(data)} bytes > max_file_bytes {check.max_file_bytes}"
        )
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = check.max_source_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size  # from the header: nothing decoded yet
                if w * h > check.max_source_pixels:
                    raise BadRow(
                        "oversized_image",
                        f"{w}x{h} = {w * h} pixels > max_source_pixels {check.max_source_pixels}",
                    )
                img.load()
                upright = ImageOps.exif_transpose(img).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadRow("oversized_image", str(err).split(".")[0]) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        message = _BYTESIO.sub("", str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise BadRow("unreadable_image", message[:120]) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    size = bounded_size(*upright.size, check.min_pixels, check.max_pixels)
    if size != upright.size:
        upright = upright.resize(size, Image.Resampling.LANCZOS)
    return upright, (w, h)


def resolve_inside(folder: Path, reference: str) -> Path:
    """The file ``reference`` names, relative to ``folder``; BadRow if it leaves the folder.

    Backslashes are path separators (a workbook made on Windows says ``images\\x.jpg``).
    """
    if reference.startswith(("\\", "/")):
        raise BadRow("path_escape", f"absolute path {reference!r}")
    ref = Path(reference.replace("\\", "/"))
    if ref.is_absolute() or ":" in ref.parts[0]:
        raise BadRow("path_escape", f"absolute path {reference!r}")
    root = folder.resolve()
    target = (folder / ref).resolve()
    if not target.is_relative_to(root):
        raise BadRow("path_escape", f"{reference!r} resolves outside {folder}")
    if not target.is_file():
        raise BadRow("missing_image", f"{reference!r} not found")
    return target


def embedded_pictures(ws: Any) -> dict[int, bytes]:
    """Pictures embedded in the sheet, by the 1-based row their top-left corner is anchored to."""
    pictures: dict[int, bytes] = {}
    for picture in getattr(ws, "_images", []):
        start = getattr(picture.anchor, "_from", None)
        if start is None:  # an absolute anchor belongs to no row
            continue
        pictures.setdefault(start.row + 1, picture._data())
    return pictures


def open_sheet(path: Path, sheet: str | None) -> Any:
    from openpyxl import load_workbook

    if not path.is_file():
        raise TunelabError(str(path), "workbook not found")
    try:
        wb = load_workbook(path, data_only=True)  # not read_only: pictures are kept
    except Exception as err:  # noqa: BLE001 - zipfile, XML and openpyxl errors alike
        raise TunelabError(str(path), f"not a readable .xlsx workbook ({err})") from None
    if sheet is None:
        return wb.worksheets[0]
    if sheet not in wb.sheetnames:
        raise TunelabError(str(path), f"no sheet {sheet!r} (sheets: {', '.join(wb.sheetnames)})")
    return wb[sheet]


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def uncomputed_formulas(path: Path, title: str, cells: set[tuple[int, int]]) -> dict:
    """{(row, column): formula} for those of ``cells`` (1-based) that hold a formula.

    openpyxl reads a formula's cached value (data_only) and None where none was ever
    computed; a second, read-only pass over the formulas tells those cells apart from
    empty ones.
    """
    from openpyxl import load_workbook

    if not cells:
        return {}
    wb = load_workbook(path, read_only=True, data_only=False)
    try:
        found = {}
        rows = {r for r, _ in cells}
        for row in wb[title].iter_rows(min_row=min(rows), max_row=max(rows)):
            for cell in row:
                key = (getattr(cell, "row", None), getattr(cell, "column", None))
                if key in cells and cell.data_type == "f":
                    found[key] = str(cell.value)
        return found
    finally:
        wb.close()


def sheet_rows(
    source: Path, params: CarInsurancePrepareParams
) -> tuple[Any, dict[str, int], dict[int, dict[str, Any]], dict[int, bytes]]:
    """(sheet, column index by key, raw cells by row number, embedded pictures by row).

    Rows run to the last row with a value or an anchored picture; a missing column is
    refused in one line that names the sheet and its header.
    """
    ws = open_sheet(source, params.sheet)
    header = [_text(c.value) for c in next(ws.iter_rows(min_row=1, max_row=1))]
    cols = params.columns
    wanted = (("image", cols.image), ("prompt", cols.prompt), ("answer", cols.answer))
    missing = [f"{name!r} (columns.{key})" for key, name in wanted if name not in header]
    if missing:
        raise TunelabError(
            f"{source} sheet {ws.title!r}",
            f"missing column{'s' * (len(missing) > 1)} {', '.join(missing)} "
            f"(header: {', '.join(header)})",
        )
    index = {key: header.index(name) for key, name in wanted}
    pictures = embedded_pictures(ws)
    last_row = max([ws.max_row, *pictures]) if pictures else ws.max_row
    rows = {}
    for row_no in range(2, last_row + 1):
        cells = [c.value for c in ws[row_no]] if row_no <= ws.max_row else []
        rows[row_no] = {k: cells[i] if i < len(cells) else None for k, i in index.items()}
    return ws, index, rows, pictures


def row_image(
    value: dict[str, str],
    picture: bytes | None,
    pending: list[tuple[str, tuple[int, int]]],
    formulas: dict[tuple[int, int], str],
    params: CarInsurancePrepareParams,
) -> tuple[Any, tuple[int, int], str]:
    """(the bounded image, its source size, where it came from) for one row, or BadRow."""
    from openpyxl.utils import get_column_letter

    if pending:
        key, (r, c) = pending[0]
        raise BadRow(
            "uncomputed_formula",
            f"{getattr(params.columns, key)!r} cell {get_column_letter(c)}{r}: {formulas[(r, c)]}",
        )
    if not value["answer"]:
        raise BadRow("empty_answer", "")
    if value["image"]:
        data = resolve_inside(Path(params.image_dir), value["image"]).read_bytes()
        origin = value["image"]
    elif picture is not None:
        data, origin = picture, "embedded picture"
    else:
        raise BadRow("missing_image", "no path and no embedded picture")
    try:
        image, size = load_image(data, params.image)
    except BadRow as bad:
        raise BadRow(bad.reason, f"{bad.detail}; {origin}" if bad.detail else origin) from None
    return image, size, origin


def vl_record(
    value: dict[str, str],
    rel: str,
    row_no: int,
    image: Any,
    size: tuple,
    origin: str,
    params: CarInsurancePrepareParams,
) -> dict[str, Any]:
    """The chat record of one row: system prompt, the user's text and image, the answer."""
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": params.system_prompt}] if params.system_prompt else []
    )
    prompt = value["prompt"] or params.default_prompt
    messages += [
        {"role": "user", "content": [{"type": "text", "text": prompt}, {"type": "image"}]},
        {"role": "assistant", "content": value["answer"]},
    ]
    meta = {
        "row": row_no,
        "image_source": origin,
        "source_size": list(size),
        "size": list(image.size),
    }
    return {"messages": messages, "images": [rel], "meta": meta}


def prepare_car_insurance(
    params: CarInsurancePrepareParams,
) -> tuple[list[dict[str, Any]], DataCard]:
    """Read and validate the workbook; return VL chat records and the data card.

    The resized PNG images ride in ``card.files`` (relative path -> bytes) and
    are written next to the records by ``write_prepared``.
    """
    source = Path(params.source)
    ws, index, rows, pictures = sheet_rows(source, params)
    card = DataCard("car_insurance", [str(source)])
    src = str(source)
    card.add_input(src, encoding="xlsx", how="Office Open XML workbook (text is UTF-8 XML)")
    records: list[dict[str, Any]] = []
    from_picture = 0
    sizes_in: list[int] = []
    empty = {
        (r, index[k] + 1)
        for r, v in rows.items()
        for k in index
        if v[k] is None and r <= ws.max_row
    }
    formulas = uncomputed_formulas(source, ws.title, empty)
    for row_no, raw in rows.items():
        value = dict(zip(raw, card.clean([_text(v) for v in raw.values()], src), strict=True))
        picture = pictures.get(row_no)
        pending = [(k, (row_no, index[k] + 1)) for k in index if (row_no, index[k] + 1) in formulas]
        if not any(value.values()) and picture is None and not pending:
            continue  # a blank row
        card.read_row(src)
        try:
            image, size, origin = row_image(value, picture, pending, formulas, params)
        except BadRow as bad:
            if params.strict:
                raise TunelabError(f"{source} row {row_no}", str(bad)) from None
            card.drop(bad.reason, src)
            continue
        from_picture += origin == "embedded picture"
        rel = f"images/row_{row_no:05d}.png"
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        card.files[rel] = buf.getvalue()
        sizes_in.append(size[0] * size[1])
        records.append(vl_record(value, rel, row_no, image, size, origin, params))
    card.extra["images"] = {
        "from_path": len(records) - from_picture,
        "from_embedded_picture": from_picture,
        "min_pixels": params.image.min_pixels,
        "max_pixels": params.image.max_pixels,
        "source_pixels_max": max(sizes_in, default=0),
    }
    return records, card

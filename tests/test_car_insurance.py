"""car_insurance ingestion: every validation path, embedded pictures, the real odometer photos."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tunelab.data.car_insurance import bounded_size, prepare_car_insurance
from tunelab.errors import TunelabError
from tunelab.samples.odometer import (
    SAMPLE_COLUMNS,
    format_answer,
    jpeg_bytes,
    render_odometer,
    write_car_insurance_samples,
    write_car_insurance_xlsx,
)

from .conftest import ROOT, run_module, section, shared_dataset

ANSWER = format_answer(123_456)


def png(size: tuple[int, int], colour: str = "white") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def workbook(
    folder: Path,
    rows: list[dict],
    embedded: dict[int, bytes] | None = None,
    files: dict[str, bytes] | None = None,
) -> Path:
    """data/<files> plus data/claims.xlsx with the sample column names."""
    for rel, data in (files or {}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    xlsx = folder / "claims.xlsx"
    write_car_insurance_xlsx(xlsx, rows, SAMPLE_COLUMNS, embedded)
    return xlsx


def params(xlsx: Path, **overrides: object) -> object:
    overrides.setdefault("image_dir", str(xlsx.parent))
    return section("prepare.car_insurance", source=str(xlsx), **overrides)


def row(image: str | None, answer: str = ANSWER, prompt: str = "读数？") -> dict:
    return {"image": image, "prompt": prompt, "answer": answer}


# --------------------------------------------------------------- the sample data


def test_committed_sample_workbook_regenerates_byte_for_byte(tmp_path: Path) -> None:
    written = write_car_insurance_samples(tmp_path)
    assert len(written) > 100
    for path in written:
        rel = path.relative_to(tmp_path)
        assert (ROOT / "data/raw" / rel).read_bytes() == path.read_bytes(), rel
    total = sum(
        p.stat().st_size for p in (ROOT / "data/raw/car_insurance").rglob("*") if p.is_file()
    )
    assert total < 700_000  # the committed sample stays small


def test_sample_workbook_drops_one_row_per_reason() -> None:
    records, card = prepare_car_insurance(params(ROOT / "data/raw/car_insurance/claims.xlsx"))
    assert dict(card.dropped) == {
        "missing_image": 1,
        "path_escape": 1,
        "unreadable_image": 1,
        "empty_answer": 1,
        "oversized_image": 1,
    }
    assert card.rows_read == len(records) + 5
    assert card.extra["images"]["from_embedded_picture"] == 8
    assert len(card.files) == len(records)
    rec = records[0]
    assert rec["messages"][0]["content"][1] == {"type": "image"}
    assert rec["messages"][-1]["content"].startswith("里程数：")
    assert rec["images"][0] in card.files


# ------------------------------------------------------------- validation paths


def test_missing_image_no_reference_and_file_not_found(tmp_path: Path) -> None:
    xlsx = workbook(
        tmp_path,
        [row(None), row("images/nope.jpg"), row("images/ok.png")],
        files={"images/ok.png": png((112, 56))},
    )
    records, card = prepare_car_insurance(params(xlsx))
    assert dict(card.dropped) == {"missing_image": 2}
    assert [r["meta"]["row"] for r in records] == [4]


def test_path_escape_dotdot_absolute_and_symlink(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outside = tmp_path / "outside.png"
    outside.write_bytes(png((112, 56)))
    data.mkdir()
    os.symlink(outside, data / "link.png")
    xlsx = workbook(
        data,
        [row("../outside.png"), row(str(outside)), row("link.png"), row("images/../ok.png")],
        files={"ok.png": png((112, 56))},
    )
    records, card = prepare_car_insurance(params(xlsx))
    assert dict(card.dropped) == {"path_escape": 3}
    assert [r["meta"]["image_source"] for r in records] == ["images/../ok.png"]


def test_unreadable_image_garbage_and_truncated(tmp_path: Path) -> None:
    good = jpeg_bytes(Image.new("RGB", (200, 80), "grey"), 90)
    xlsx = workbook(
        tmp_path,
        [row("a.jpg"), row("b.jpg"), row("c.txt"), row("d.jpg")],
        files={
            "a.jpg": b"\xff\xd8\xff not a jpeg",
            "b.jpg": good[: len(good) // 2],
            "c.txt": b"hello",
            "d.jpg": good,
        },
    )
    records, card = prepare_car_insurance(params(xlsx))
    assert dict(card.dropped) == {"unreadable_image": 3}
    assert len(records) == 1


def test_oversized_image_decompression_bomb_guard(tmp_path: Path) -> None:
    bomb = io.BytesIO()
    Image.new("1", (8000, 6000), 0).save(bomb, format="PNG", optimize=True)  # 48 Mpx, a few KB
    assert len(bomb.getvalue()) < 50_000
    xlsx = workbook(
        tmp_path,
        [row("bomb.png"), row("big.png"), row("ok.png")],
        files={"bomb.png": bomb.getvalue(), "big.png": png((300, 300)), "ok.png": png((100, 50))},
    )
    # the header check: pixels above max_source_pixels, nothing decoded
    records, card = prepare_car_insurance(params(xlsx, image__max_source_pixels=40_000_000))
    assert dict(card.dropped) == {"oversized_image": 1}
    # PIL's own guard (DecompressionBombError beyond twice the limit) is set to the same value
    records, card = prepare_car_insurance(params(xlsx, image__max_source_pixels=20_000))
    assert dict(card.dropped) == {"oversized_image": 2}
    # file size guard
    records, card = prepare_car_insurance(params(xlsx, image__max_file_bytes=600))
    assert card.dropped["oversized_image"] >= 2 and len(records) <= 1
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the process-wide limit is restored


def test_empty_answer_and_blank_rows(tmp_path: Path) -> None:
    xlsx = workbook(
        tmp_path,
        [
            row("ok.png", answer="   "),
            row("ok.png", answer=None),
            row(None, None, None),
            row("ok.png"),
        ],
        files={"ok.png": png((112, 56))},
    )
    records, card = prepare_car_insurance(params(xlsx))
    assert dict(card.dropped) == {"empty_answer": 2}
    assert card.rows_read == 3  # the blank row is skipped, not counted
    assert len(records) == 1


def test_empty_prompt_takes_default_prompt(tmp_path: Path) -> None:
    xlsx = workbook(tmp_path, [row("ok.png", prompt=None)], files={"ok.png": png((112, 56))})
    records, _ = prepare_car_insurance(params(xlsx, default_prompt="读一下里程。"))
    assert records[0]["messages"][0]["content"][0]["text"] == "读一下里程。"


def test_strict_mode_stops_on_the_first_bad_row(tmp_path: Path) -> None:
    xlsx = workbook(
        tmp_path, [row("ok.png"), row("ok.png"), row("../x.png")], files={"ok.png": png((112, 56))}
    )
    with pytest.raises(
        TunelabError, match=r"claims.xlsx row 4: the image path leaves the data folder"
    ):
        prepare_car_insurance(params(xlsx, strict=True))


def test_strict_mode_stage_exits_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "data/raw/car_insurance"
    workbook(
        raw,
        [row("ok.png"), row("ok.png", answer=""), row("ok.png")],
        files={"ok.png": png((112, 56))},
    )
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    text = text.replace(
        "    strict: false            # true:", "    strict: true             # true:"
    )
    assert "strict: true" in text
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    res = run_module(
        ["stages.prepare", "car_insurance"], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    )
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[-1] == (
        "error: data/raw/car_insurance/claims.xlsx row 3: the expected answer is empty"
    )
    assert not (tmp_path / "data/prepared/car_insurance").exists()


def test_missing_column_and_missing_sheet(tmp_path: Path) -> None:
    xlsx = workbook(tmp_path, [row("ok.png")], files={"ok.png": png((112, 56))})
    with pytest.raises(TunelabError, match=r"missing column '答案' \(columns.answer"):
        prepare_car_insurance(params(xlsx, columns__answer="答案"))
    with pytest.raises(TunelabError, match=r"no sheet 'Sheet9'"):
        prepare_car_insurance(params(xlsx, sheet="Sheet9"))
    with pytest.raises(TunelabError, match=r"workbook not found"):
        prepare_car_insurance(params(tmp_path / "nope.xlsx"))
    (tmp_path / "bad.xlsx").write_bytes(b"PK not really")
    with pytest.raises(TunelabError, match=r"not a readable .xlsx"):
        prepare_car_insurance(params(tmp_path / "bad.xlsx"))


def test_embedded_pictures_are_read_and_a_path_wins(tmp_path: Path) -> None:
    red, blue = png((120, 60), "red"), png((120, 60), "blue")
    xlsx = workbook(
        tmp_path,
        [
            row(None, format_answer(1)),
            row("blue.png", format_answer(2)),
            row(None, format_answer(3)),
        ],
        embedded={0: red, 1: red},
        files={"blue.png": blue},
    )
    records, card = prepare_car_insurance(params(xlsx))
    assert dict(card.dropped) == {"missing_image": 1}  # row 4: no path, no picture
    assert [r["meta"]["image_source"] for r in records] == ["embedded picture", "blue.png"]
    colours = [Image.open(io.BytesIO(card.files[r["images"][0]])).getpixel((5, 5)) for r in records]
    assert colours == [(255, 0, 0), (0, 0, 255)]


def test_images_are_bounded_upright_rgb(tmp_path: Path) -> None:
    big = Image.new("RGB", (1600, 1200), "white")
    tiny = Image.new("L", (30, 10), 128)
    rotated = Image.new("RGB", (200, 100), "white")
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    rotated.save(buf, format="JPEG", exif=exif)
    files = {"big.jpg": jpeg_bytes(big, 80), "tiny.png": b"", "rot.jpg": buf.getvalue()}
    tb = io.BytesIO()
    tiny.save(tb, format="PNG")
    files["tiny.png"] = tb.getvalue()
    xlsx = workbook(tmp_path, [row("big.jpg"), row("tiny.png"), row("rot.jpg")], files=files)
    p = params(xlsx, image__min_pixels=3136, image__max_pixels=18816)
    records, card = prepare_car_insurance(p)
    sizes = [tuple(r["meta"]["size"]) for r in records]
    for (w, h), rec in zip(sizes, records, strict=True):
        assert 3136 <= w * h <= 18816, (w, h)
        img = Image.open(io.BytesIO(card.files[rec["images"][0]]))
        assert img.mode == "RGB" and img.size == (w, h)
    assert abs(sizes[0][0] / sizes[0][1] - 4 / 3) < 0.02
    assert abs(sizes[1][0] / sizes[1][1] - 3) < 0.1
    assert sizes[2][1] > sizes[2][0]  # EXIF orientation applied: now portrait
    assert bounded_size(100, 50, 10, 10_000) == (100, 50)


# ------------------------------------------------------------ real photographs


def test_real_odometer_photos_through_an_xlsx(tmp_path: Path) -> None:
    photos = sorted(shared_dataset("odometer", "images").glob("*.jpg"))
    assert len(photos) == 40
    data = tmp_path / "claims"
    (data / "photos").mkdir(parents=True)
    rows, embedded = [], {}
    for i, photo in enumerate(photos):
        if i % 5 == 4:  # every fifth photo embedded in the sheet instead of linked
            embedded[i] = photo.read_bytes()
            rows.append(row(None, format_answer(10_000 + i)))
        else:
            shutil.copy(photo, data / "photos" / photo.name)
            rows.append(row(f"photos/{photo.name}", format_answer(10_000 + i)))
    # and one link to the shared folder itself: outside the data folder
    os.symlink(photos[0], data / "photos" / "link.jpg")
    rows.append(row("photos/link.jpg"))
    xlsx = workbook(data, rows, embedded=embedded)
    records, card = prepare_car_insurance(params(xlsx, image__max_pixels=401_408))
    assert dict(card.dropped) == {"path_escape": 1}
    assert len(records) == 40
    assert card.extra["images"]["from_embedded_picture"] == 8
    for rec, photo in zip(records, photos, strict=True):
        with Image.open(photo) as src:
            w0, h0 = src.size
        w, h = rec["meta"]["size"]
        assert tuple(rec["meta"]["source_size"]) == (w0, h0)
        assert 3136 <= w * h <= 401_408
        assert abs(w / h - w0 / h0) < 0.02  # aspect kept: portrait photos stay portrait
    portrait = [r for r in records if r["meta"]["size"][1] > r["meta"]["size"][0]]
    landscape = [r for r in records if r["meta"]["size"][0] > r["meta"]["size"][1]]
    assert portrait and landscape
    card_json = json.loads(json.dumps(card.extra))
    assert card_json["images"]["source_pixels_max"] == max(
        r["meta"]["source_size"][0] * r["meta"]["source_size"][1] for r in records
    )


def test_generated_dashboards_are_small_and_readable_sized() -> None:
    import random

    img = render_odometer(123_456, random.Random(0))
    assert img.size == (224, 84) and img.mode == "RGB"


# ------------------------------------------------------ workbooks from elsewhere


def test_windows_separators_formulas_and_the_image_folder(tmp_path: Path) -> None:
    """images\\x.png (a workbook made on Windows) is found; a formula cell never computed
    is its own reason, not an empty answer; image paths resolve in image_dir."""
    xlsx = workbook(
        tmp_path / "sheet",
        [
            row("images\\ok.png"),
            row("images/ok.png", answer='="里程数："&"1 公里"'),
            row("images/ok.png", answer=""),
            row("\\\\server\\share\\x.png"),
        ],
    )
    (tmp_path / "pics/images").mkdir(parents=True)
    (tmp_path / "pics/images/ok.png").write_bytes(png((112, 56)))
    records, card = prepare_car_insurance(params(xlsx, image_dir=str(tmp_path / "pics")))
    assert [r["meta"]["image_source"] for r in records] == ["images\\ok.png"]
    assert dict(card.dropped) == {"uncomputed_formula": 1, "empty_answer": 1, "path_escape": 1}
    entry = card.to_dict(records, [])["inputs"][str(xlsx)]
    assert entry["rows_dropped"] == dict(card.dropped) and entry["rows_read"] == 4
    with pytest.raises(TunelabError) as err:
        prepare_car_insurance(params(xlsx, image_dir=str(tmp_path / "pics"), strict=True))
    assert str(err.value) == (
        f"{xlsx} row 3: a formula cell has no computed value (open and save the workbook in a "
        'spreadsheet application) (\'标准答案\' cell C3: ="里程数："&"1 公里")'
    )


def test_strict_unreadable_image_names_the_file_not_a_bytesio(tmp_path: Path) -> None:
    xlsx = workbook(tmp_path, [row("bad.jpg")], files={"bad.jpg": b"not an image at all"})
    with pytest.raises(TunelabError) as err:
        prepare_car_insurance(params(xlsx, strict=True))
    assert "BytesIO" not in str(err.value) and "0x" not in str(err.value)
    assert str(err.value).startswith(f"{xlsx} row 2: the image cannot be decoded (")
    assert str(err.value).endswith("; bad.jpg)")


def test_all_missing_columns_are_named(tmp_path: Path) -> None:
    xlsx = workbook(tmp_path, [row("ok.png")], files={"ok.png": png((112, 56))})
    with pytest.raises(TunelabError) as err:
        prepare_car_insurance(params(xlsx, columns__answer="答案", columns__image="照片"))
    assert "missing columns '照片' (columns.image), '答案' (columns.answer)" in str(err.value)

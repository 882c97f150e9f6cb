"""The committed smoke data is exactly what the generator writes."""

from __future__ import annotations

from pathlib import Path

from tunelab.samples.write import write_samples

from .conftest import ROOT


def test_committed_samples_regenerate_byte_for_byte(tmp_path: Path) -> None:
    written = write_samples(tmp_path)
    assert len(written) >= 8
    for path in written:
        rel = path.relative_to(tmp_path)
        assert (ROOT / "data/raw" / rel).read_bytes() == path.read_bytes(), rel


def test_medical_samples_span_four_encodings() -> None:
    raw = ROOT / "data/raw/medical"
    assert (raw / "utf8_bom.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    gbk = (raw / "gbk.csv").read_bytes()
    gb18030 = (raw / "gb18030.csv").read_bytes()
    for data in (gbk, gb18030):
        try:
            data.decode("utf-8")
            raise AssertionError("a GBK/GB18030 sample decodes as UTF-8")
        except UnicodeDecodeError:
            pass
    gbk.decode("gbk")
    try:
        gb18030.decode("gbk")
        raise AssertionError("the gb18030 sample has no character outside GBK")
    except UnicodeDecodeError:
        gb18030.decode("gb18030")

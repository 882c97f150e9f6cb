"""prepare.<scenario>: where each scenario's raw data is and how it is read, cleaned and split."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from tunelab.config.base import PixelBoundsParams
from tunelab.config.core import (
    NonEmptyStr,
    OpenFraction,
    PosFloat,
    PosInt,
    Section,
)


class SplitParams(Section):
    val_fraction: OpenFraction
    max_val_rows: PosInt
    seed: int


class InstructionFieldsParams(Section):
    """Field names of instruction / input / output records (input: null when there is none)."""

    instruction: NonEmptyStr
    input: NonEmptyStr | None
    output: NonEmptyStr


class AlpacaPrepareParams(Section):
    source: NonEmptyStr  # a DVC dependency (dvc.yaml templates it from here)
    fields: InstructionFieldsParams
    system_prompt: str
    max_chars: PosInt
    split: SplitParams


class MedicalColumnsParams(Section):
    """CSV header names; department and title may be null when the files have no such column."""

    department: NonEmptyStr | None
    title: NonEmptyStr | None
    ask: NonEmptyStr
    answer: NonEmptyStr


class MedicalPrepareParams(Section):
    source: NonEmptyStr  # a folder of CSVs (a DVC dependency)
    encodings: Annotated[list[str], Field(min_length=1)]
    max_mess: PosFloat  # charset-normalizer mess ratio above which a decode is implausible
    columns: MedicalColumnsParams
    system_prompt: str
    max_chars: PosInt
    include_title: bool
    split: SplitParams


class CounselFieldsParams(Section):
    query: NonEmptyStr
    laws: NonEmptyStr | None  # null: the records cite no articles
    response: NonEmptyStr


class LegalPrepareParams(Section):
    exam_source: NonEmptyStr  # both are DVC dependencies (dvc.yaml templates them from here)
    counsel_source: NonEmptyStr
    exam_fields: InstructionFieldsParams
    counsel_fields: CounselFieldsParams
    system_prompt: str
    include_articles: bool
    max_chars: PosInt
    split: SplitParams


class PreferencePrepareColumns(Section):
    prompt: str
    chosen: str
    rejected: str
    system: str | None  # a column with a per-row system prompt, or null


class PreferencePrepareParams(Section):
    """prepare.preference: JSONL preference pairs (prompt, chosen, rejected)."""

    source: str
    columns: PreferencePrepareColumns
    system_prompt: str  # for rows without their own; empty: no system message
    max_chars: PosInt  # prompt + chosen + rejected longer than this is dropped
    split: SplitParams


class QAFieldsParams(Section):
    question: NonEmptyStr
    answer: NonEmptyStr


class GSM8KPrepareParams(Section):
    """prepare.gsm8k: GSM8K-format JSONL -> GRPO prompts with the numeric answer."""

    train_source: NonEmptyStr
    test_source: NonEmptyStr
    fields: QAFieldsParams
    system_prompt: str
    user_template: str
    reference_template: str
    max_train_rows: PosInt | None
    max_test_rows: PosInt | None

    @model_validator(mode="after")
    def _placeholders(self) -> GSM8KPrepareParams:
        if "{question}" not in self.user_template:
            raise ValueError("user_template must contain {question}")
        for name in ("{reasoning}", "{answer}"):
            if name not in self.reference_template:
                raise ValueError(f"reference_template must contain {name}")
        return self


class XlsxColumnsParams(Section):
    """Header names of the spreadsheet columns (the image column may be empty when a
    picture is embedded in the sheet and anchored to the row)."""

    image: str
    prompt: str
    answer: str


class ImageCheckParams(PixelBoundsParams):
    """Resize bounds for prepared images, plus the decompression-bomb guard."""

    max_source_pixels: PosInt  # larger source images are rejected before decoding
    max_file_bytes: PosInt


class CarInsurancePrepareParams(Section):
    """prepare.car_insurance: an .xlsx of image + prompt + expected answer rows."""

    source: NonEmptyStr  # the workbook
    image_dir: NonEmptyStr  # image paths in the sheet are relative to it and must stay inside
    sheet: str | None  # None: the first sheet
    columns: XlsxColumnsParams
    default_prompt: str  # used where a row's prompt cell is empty
    system_prompt: str  # empty: no system message
    strict: bool  # true: the first bad row stops the stage (one line naming it)
    image: ImageCheckParams
    split: SplitParams

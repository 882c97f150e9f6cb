"""Write the smoke profile's raw data (``python -m tunelab.samples``: under data/raw/)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tunelab.samples import domain, gsm8k, preference
from tunelab.samples.raw import alpaca_records, corpus_lines, legal_records, medical_files


def write_samples(root: Path, seed: int = 20261130) -> list[Path]:
    """Write every sample file under ``root`` (data/raw); return the paths written."""
    written: list[Path] = []

    def put(rel: str, data: bytes) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)

    def dump(obj: object) -> bytes:
        return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")

    put("corpus/corpus.txt", ("\n".join(corpus_lines(random.Random(seed))) + "\n").encode())
    put("alpaca/sample.json", dump(alpaca_records(random.Random(seed + 1))))
    for name, (_enc, data) in medical_files(random.Random(seed + 2)).items():
        put(f"medical/{name}", data)
    exam, counsel = legal_records(random.Random(seed + 3))
    put("legal/judicial_exam.json", dump(exam))
    put("legal/counsel_with_articles.json", dump(counsel))
    for name, data in gsm8k.smoke_files(random.Random(seed + 4), n_train=800, n_test=64).items():
        put(f"gsm8k/{name}", data)
    put("preference/pairs.jsonl", preference.smoke_file(random.Random(seed + 5)))
    for scenario, docs in (
        ("medical", domain.medical_documents(random.Random(seed + 6))),
        ("legal", domain.legal_documents(random.Random(seed + 7))),
    ):
        put(f"pretrain/{scenario}/domain.jsonl", domain.smoke_file(docs))
    return written

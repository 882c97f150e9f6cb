"""The smoke profile's raw scenario files (alpaca, medical, legal) and pretraining corpus.

The raw files deliberately contain what the loaders must handle: empty and duplicate
rows, over-long QA pairs, quoted fields with embedded newlines, and four encodings
across the medical CSVs (utf-8, utf-8-sig, gbk, gb18030).
"""

from __future__ import annotations

import csv
import io
import random

from tunelab.samples.facts import (
    ANIMAL_QUESTIONS,
    ANIMALS,
    ASK_TEMPLATES,
    CAPITAL_QUESTIONS,
    CAPITALS,
    COUNSEL_PREFIXES,
    DURATIONS,
    EXAM_OPTIONS,
    LAWS,
    MEDICAL,
    OPPOSITE_QUESTIONS,
    OPPOSITES,
    TITLE_TEMPLATES,
    medical_answer,
)
from tunelab.samples.gsm8k import corpus_lines as gsm8k_lines


def alpaca_records(rng: random.Random) -> list[dict[str, str]]:
    """Alpaca rows (instruction, input, output) over the English fact tables."""
    rows: list[dict[str, str]] = []
    for country, city in CAPITALS.items():
        for q in CAPITAL_QUESTIONS:
            rows.append(
                {
                    "instruction": q.format(x=country),
                    "input": "",
                    "output": f"The capital of {country} is {city}.",
                }
            )
    for word, opp in OPPOSITES.items():
        for q, inp in OPPOSITE_QUESTIONS:
            rows.append(
                {
                    "instruction": q.format(x=word),
                    "input": inp.format(x=word),
                    "output": f'The opposite of "{word}" is "{opp}".',
                }
            )
    for animal, cls in ANIMALS.items():
        for q, inp in ANIMAL_QUESTIONS:
            article = "An" if cls[0] in "aeiou" else "A"
            rows.append(
                {
                    "instruction": q.format(x=animal),
                    "input": inp.format(x=animal),
                    "output": f"The {animal} is {article.lower()} {cls}.",
                }
            )
    rng.shuffle(rows)
    # What a loader must drop: an empty output, an exact duplicate, an over-long row.
    rows.insert(7, {"instruction": "Say nothing.", "input": "", "output": ""})
    rows.insert(11, dict(rows[3]))
    rows.insert(
        19, {"instruction": "Repeat this.", "input": "word " * 1200, "output": "word " * 1200}
    )
    return rows


def medical_rows(rng: random.Random) -> list[list[str]]:
    """(department, title, ask, answer) rows, with the noise the loader must drop."""
    rows: list[list[str]] = []
    for dept, symptom, cause, advice in MEDICAL:
        for template in ASK_TEMPLATES:
            for duration in rng.sample(DURATIONS, 2):
                rows.append(
                    [
                        dept,
                        rng.choice(TITLE_TEMPLATES).format(s=symptom),
                        template.format(d=duration, s=symptom),
                        medical_answer(cause, symptom, advice),
                    ]
                )
    rng.shuffle(rows)
    return rows


def medical_files(rng: random.Random) -> dict[str, tuple[str, bytes]]:
    """Four CSVs, one per encoding, sharing the rows between them."""
    rows = medical_rows(rng)
    quarter = len(rows) // 4
    chunks = [rows[i * quarter : (i + 1) * quarter] for i in range(3)] + [rows[3 * quarter :]]
    # Noise: an embedded newline in a quoted field, an empty row, a duplicate,
    # an over-long pair, and a character outside GBK in the gb18030 file.
    chunks[0].insert(
        2,
        [
            "消化科",
            "胃胀",
            "医生您好，\n我吃完饭就胃胀，\n请问怎么办？",
            medical_answer("消化不良", "胃胀", "建议少食多餐，饭后适当散步。"),
        ],
    )
    chunks[1].insert(3, ["", "", "", ""])
    chunks[1].insert(5, list(chunks[1][0]))
    chunks[2].insert(
        4, ["心血管科", "心慌很久", "我" + "心慌，" * 80 + "怎么办？", "建议就医。" * 20]
    )
    chunks[3].insert(
        1,
        [
            "普通内科",
            "头晕",
            "您好，我叫𠮷田，最近总是头晕，需要注意什么？",
            medical_answer("低血糖", "头晕", "建议按时吃饭，随身带糖果。"),
        ],
    )
    files = {}
    for name, encoding, chunk in zip(
        ["utf8.csv", "utf8_bom.csv", "gbk.csv", "gb18030.csv"],
        ["utf-8", "utf-8-sig", "gbk", "gb18030"],
        chunks,
        strict=True,
    ):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["department", "title", "ask", "answer"])
        writer.writerows(chunk)
        files[name] = (encoding, buf.getvalue().encode(encoding))
    return files


def legal_records(rng: random.Random) -> tuple[list, list]:
    """Judicial-exam items (list of one-element lists) and counsel records with laws."""
    exam: list[list[dict[str, str]]] = []
    counsel: list[dict] = []
    for i, (article, text, topic, question, conclusion) in enumerate(LAWS):
        for prefix in COUNSEL_PREFIXES:
            for ending in ["", "谢谢。"]:
                counsel.append(
                    {
                        "query": f"{prefix}{question}{ending}",
                        "laws": [f"{article}：{text}"],
                        "response": f"根据{article}的规定，{text}因此，{conclusion}。",
                    }
                )
        wrong = LAWS[(i + 1) % len(LAWS)]
        options = [text, wrong[1]]
        rng.shuffle(options)
        letter = EXAM_OPTIONS[options.index(text)]
        for j, option in enumerate(options):
            correct = option == text
            exam.append(
                [
                    {
                        "input": "",
                        "instruction": f"关于{topic}，以下说法是否正确？选项{EXAM_OPTIONS[j]}：{option}请给出详细的推理过程之后再给出答案。",
                        "output": (
                            f"{article}规定：{text}所以选项{EXAM_OPTIONS[j]}正确。"
                            if correct
                            else f"该选项与{topic}无关，{article}规定：{text}所以选项{EXAM_OPTIONS[j]}错误，正确的是选项{letter}。"
                        ),
                    }
                ]
            )
    rng.shuffle(counsel)
    rng.shuffle(exam)
    counsel.insert(3, {"query": "", "laws": [], "response": ""})
    return exam, counsel


def corpus_lines(rng: random.Random) -> list[str]:
    """Plain sentences stating every fact, for the tiny model's pretraining."""
    lines: list[str] = []
    for country, city in CAPITALS.items():
        lines += [
            f"The capital of {country} is {city}.",
            f"{city} is the capital of {country}.",
            f"People in {country} call {city} their capital city.",
        ]
    for word, opp in OPPOSITES.items():
        lines += [
            f'The opposite of "{word}" is "{opp}".',
            f'"{opp}" is the opposite of "{word}".',
            f"Something {word} is not {opp}.",
        ]
    for animal, cls in ANIMALS.items():
        article = "an" if cls[0] in "aeiou" else "a"
        lines += [f"The {animal} is {article} {cls}.", f"A {animal} is a kind of {cls}."]
    for dept, symptom, cause, advice in MEDICAL:
        lines += [
            f"{symptom}可能与{cause}有关。{advice}",
            f"{symptom}属于{dept}的常见问题。",
            medical_answer(cause, symptom, advice),
        ]
    for article, text, topic, _question, conclusion in LAWS:
        lines += [
            f"{article}：{text}",
            f"关于{topic}，{article}规定：{text}",
            f"在{topic}问题上，{conclusion}。",
        ]
    lines += [
        f"{a} plus {b} equals {a + b}."
        for a, b in ((rng.randint(1, 50), rng.randint(1, 50)) for _ in range(120))
    ]
    lines += gsm8k_lines(rng, n_problems=40, n_tagged=30)  # sums, word problems, the markup
    rng.shuffle(lines)
    return lines

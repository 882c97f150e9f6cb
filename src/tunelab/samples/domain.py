"""Domain documents for continual pretraining in the smoke profile (medical, legal)."""

from __future__ import annotations

import json
import random

from tunelab.samples.facts import DURATIONS, LAWS, MEDICAL, medical_answer


def medical_documents(rng: random.Random) -> list[str]:
    docs = []
    for dept, symptom, cause, advice in MEDICAL:
        d1, d2 = rng.sample(DURATIONS, 2)
        docs += [
            f"健康科普：{symptom}的常见原因是{cause}。{advice}",
            f"在{dept}门诊，{symptom}的患者很多，{cause}是主要原因之一。",
            f"如果{d1}出现{symptom}，要想到{cause}的可能。{advice}",
            f"{cause}会引起{symptom}，{dept}医生提醒大家：{advice}",
            f"问：{symptom}应该挂哪个科？答：{symptom}一般先看{dept}。",
            f"病例：患者{d2}{symptom}，经{dept}检查，考虑{cause}。",
        ]
    # Quoting an SFT answer verbatim: dropped when that answer is in the SFT held-out set.
    for _dept, symptom, cause, advice in MEDICAL[:4]:
        docs.append(f"门诊记录：医生回复“{medical_answer(cause, symptom, advice)}”")
    rng.shuffle(docs)
    return docs


def legal_documents(rng: random.Random) -> list[str]:
    docs = []
    for article, text, topic, question, conclusion in LAWS:
        docs += [
            f"{topic}纠纷中常被引用的是{article}。该条规定，{text}",
            f"律师解读：{conclusion}，依据是{article}。",
            f"法律问答：{question}答：{conclusion}。",
            f"普法小课堂：说到{topic}，{article}写明{text}",
            f"实务提示：处理{topic}问题时，先查{article}。",
        ]
    # Quoting an SFT answer verbatim: dropped when that answer is in the SFT held-out set.
    for article, text, _topic, _question, conclusion in LAWS[:4]:
        docs.append(f"判决书摘录：“根据{article}的规定，{text}因此，{conclusion}。”")
    rng.shuffle(docs)
    return docs


def smoke_file(docs: list[str]) -> bytes:
    """JSONL of the documents plus one bad row per other drop reason."""
    rows = [{"text": d} for d in docs]
    rows.insert(3, {"text": "   "})
    rows.insert(7, dict(rows[1]))
    rows.insert(11, {"text": "没有换行的长文本" * 300})
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()

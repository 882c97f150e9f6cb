"""The Ollama Modelfile written beside an exported .gguf.

    ollama create tunelab-alpaca -f exports/alpaca-f16/Modelfile

FROM names the .gguf relative to the Modelfile (Ollama resolves it from the
Modelfile's folder). TEMPLATE is the training chat template translated into the Go
text/template that Ollama renders: tunelab trains with ChatML (``models/chat.py``),
so the translation is the ChatML layout over Ollama's ``.Messages``; a template that
does not render ChatML is refused rather than guessed. Ollama puts the Modelfile's
SYSTEM first when a request brings no system message, and with it the rendered
prompt equals ``apply_chat_template(..., add_generation_prompt=True)`` of the
training tokenizer (tests/test_gguf_export.py renders both, Go's text/template on
one side). The stop tokens are ChatML's markers and end-of-text. SYSTEM is the
system prompt of the data the adapter was trained on (the run card names the file
and its hash).

Simplified: system/user/assistant turns only (no tools, no images); Ollama merges
consecutive messages of one role before rendering, as the Go template sees them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.models.chat import END_OF_TEXT, IM_END, IM_START

MODELFILE = "Modelfile"

# ChatML over Ollama's template values: .Messages (role, content), system first.
OLLAMA_CHATML = (
    "{{- range .Messages }}" + IM_START + "{{ .Role }}\n{{ .Content }}" + IM_END + "\n"
    "{{ end }}" + IM_START + "assistant\n"
)
STOP_TOKENS = (IM_END, IM_START, END_OF_TEXT)

PROBES: list[list[dict[str, str]]] = [
    [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
    [
        {"role": "system", "content": "系统 line1\nline2"},
        {"role": "user", "content": "第一问？"},
        {"role": "assistant", "content": "答：1"},
        {"role": "user", "content": " two  spaces\n"},
    ],
]


def chatml(messages: list[dict[str, str]]) -> str:
    """ChatML with the generation prompt: what OLLAMA_CHATML renders."""
    turns = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return turns + f"{IM_START}assistant\n"


def check_chatml(tokenizer: Any, where: str) -> None:
    """Refuse a chat template that does not render ChatML on the probe conversations."""
    for messages in PROBES:
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as err:  # noqa: BLE001 - any template failure is the same refusal
            raise TunelabError(where, f"the chat template does not render ({err})") from None
        if text != chatml(messages):
            raise TunelabError(
                where,
                "the chat template is not ChatML; no Ollama TEMPLATE translation exists for it",
            )


def _quoted(text: str, where: str) -> str:
    if '"""' in text:
        raise TunelabError(where, 'contains """, which an Ollama Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile_text(gguf_file: str, tokenizer: Any, system: str | None, where: str) -> str:
    """The Modelfile: FROM, TEMPLATE, PARAMETER stop lines and SYSTEM (when one was trained)."""
    check_chatml(tokenizer, where)
    stops = [*STOP_TOKENS]
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    lines = [
        f"# Written by `tunelab export`; `ollama create NAME -f {MODELFILE}` in this folder.",
        f"FROM ./{gguf_file}",
        f"TEMPLATE {_quoted(OLLAMA_CHATML, 'TEMPLATE')}",
        *(f'PARAMETER stop "{s}"' for s in stops),
    ]
    if system:
        lines.append(f"SYSTEM {_quoted(system, 'system prompt')}")
    return "\n".join(lines) + "\n"


def training_system_prompt(adapter_dir: Path) -> dict[str, Any]:
    """The system prompt of the training data named in the adapter's run card.

    Returns ``{"text": str | None, "source": str}``. The file must be the one the
    adapter was trained on (same sha256 as in the run card), and every row must
    carry the same system prompt (one Modelfile has one SYSTEM).
    """
    from tunelab.io import sha256_path

    card_path = Path(adapter_dir) / "run_card.json"
    if not card_path.is_file():
        return {"text": None, "source": f"none ({card_path} is absent)"}
    card = json.loads(card_path.read_text(encoding="utf-8"))
    train = (card.get("inputs") or {}).get("train") or {}
    if not train.get("path"):
        return {"text": None, "source": f"none ({card_path} names no training data)"}
    path = Path(train["path"])
    if not path.is_file():
        raise TunelabError(
            str(path),
            "the training data named in the run card is missing (run `dvc pull`); "
            "the Modelfile's SYSTEM comes from it",
        )
    if train.get("sha256") and sha256_path(path) != train["sha256"]:
        raise TunelabError(
            str(path), f"changed since the adapter was trained (sha256 differs from {card_path})"
        )
    prompts = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            turns = row.get("messages") or row.get("prompt") or []
            prompts.add(turns[0]["content"] if turns and turns[0]["role"] == "system" else "")
    if len(prompts) > 1:
        raise TunelabError(
            str(path), f"rows carry {len(prompts)} different system prompts; a Modelfile has one"
        )
    text = prompts.pop() if prompts else ""
    return {"text": text or None, "source": str(path)}

"""The ChatML chat template with generation markers.

Qwen2/Qwen2.5 speak ChatML. TRL's ``assistant_only_loss`` needs the template to
wrap assistant turns in ``{% generation %}...{% endgeneration %}``; Qwen's own
templates do not, so a ChatML tokenizer without the markers gets this one (the
Qwen templates differ only in adding a default system prompt when none is
given, and in tool-call formatting, which tunelab does not use).
"""

from __future__ import annotations

from typing import Any

from tunelab.errors import TunelabError

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def ensure_generation_template(tokenizer: Any, where: str) -> bool:
    """Give a ChatML tokenizer the marked template; return True when it was replaced."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "{% generation %}" in template.replace("{%-", "{%").replace(" -%}", " %}"):
        return False
    if template and IM_START not in template:
        raise TunelabError(
            where,
            "assistant_only_loss needs a ChatML chat template with "
            "{% generation %} markers; this tokenizer's template is not ChatML "
            "(set assistant_only_loss: false)",
        )
    tokenizer.chat_template = CHATML_TEMPLATE
    return True

"""Stop strings for the continuous engine, with lm-eval's own rule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def stop_strings(tokenizer: Any, strings: Sequence[str]) -> Callable[[list[int], int], int | None]:
    """lm-eval's stop check (``MultiTokenEOSCriteria``: a stop string inside the decode of
    a row's last len(tokens(stop)) + 2 new tokens) as a function for ``Engine.run``: the
    first token index at which it holds, or None."""
    looks = [(s, len(tokenizer.encode(s, add_special_tokens=False)) + 2) for s in strings]
    widest = max((n for _, n in looks), default=0)

    def first_stop(tokens: list[int], start: int = 0) -> int | None:
        if not looks:
            return None
        # cheap test first: one decode of the tail since the last check
        text = tokenizer.decode(tokens[max(0, start - widest) :])
        if not any(s in text for s, _ in looks):
            return None
        for end in range(start + 1, len(tokens) + 1):
            for s, n in looks:
                if s in tokenizer.decode(tokens[max(0, end - n) : end]):
                    return end - 1
        return None

    return first_stop

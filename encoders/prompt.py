"""Prompt syntax: words with emphasis weights, as in Stable Diffusion front ends.

    (word)            weight x 1.1        ((word))   x 1.21 (brackets multiply)
    (some words:1.5)  weight x 1.5        [word]     weight / 1.1
    \\( \\) \\[ \\] \\: \\\\    literal characters

Words are split on whitespace and on bracket boundaries ("(red)circle" is two words);
punctuation stays inside the word here and is split by the tokenizer, which gives every
piece its word's weight. A ':' outside round brackets is ordinary text.
"""
from __future__ import annotations

import math
import re

ROUND_MULTIPLIER = 1.1  # what "(word)" multiplies a weight by
SQUARE_MULTIPLIER = 1 / 1.1  # what "[word]" multiplies a weight by
MAX_WEIGHT = 10.0  # every weight, explicit or accumulated, must lie in [0, MAX_WEIGHT]

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_ESCAPABLE = "()[]:\\"


class PromptError(ValueError):
    """A prompt that breaks the emphasis syntax; `position` is the 0-based character index."""

    def __init__(self, message: str, text: str, position: int) -> None:
        self.message = message
        self.text = text
        self.position = position
        super().__init__(f"{message} at position {position} of the prompt:\n  {text}\n  {' ' * position}^")


def parse_prompt(text: str) -> list[tuple[str, float]]:
    """Split `text` into words with emphasis weights.

    "a (red:1.4) ((big)) [dull] circle" ->
    [("a", 1.0), ("red", 1.4), ("big", 1.21), ("dull", 0.909...), ("circle", 1.0)].
    Raises PromptError (naming the character position) for unbalanced brackets, a bad
    ":number" and any weight outside [0, 10]. An empty prompt gives [].
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_prompt expects a str, got {type(text).__name__}")
    multipliers: list[float] = []  # one per bracket group, in order of opening
    open_groups: list[tuple[str, int, int]] = []  # (bracket, position, group id), innermost last
    words: list[tuple[str, tuple[int, ...], int]] = []  # (word, group ids outer->inner, start)
    chars: list[str] = []
    start = 0

    def flush() -> None:
        if chars:
            words.append(("".join(chars), tuple(g for _, _, g in open_groups), start))
            chars.clear()

    def add_char(ch: str, pos: int) -> None:
        nonlocal start
        if not chars:
            start = pos
        chars.append(ch)

    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in _ESCAPABLE:
            add_char(text[i + 1], i)
            i += 2
            continue
        if ch.isspace():
            flush()
        elif ch in "([":
            flush()
            open_groups.append((ch, i, len(multipliers)))
            multipliers.append(ROUND_MULTIPLIER if ch == "(" else SQUARE_MULTIPLIER)
        elif ch in ")]":
            flush()
            opener = "(" if ch == ")" else "["
            if not open_groups:
                raise PromptError(f"unbalanced '{ch}' with no matching '{opener}'", text, i)
            kind, pos, _ = open_groups[-1]
            if kind != opener:
                raise PromptError(f"'{ch}' cannot close the '{kind}' opened at position {pos}", text, i)
            open_groups.pop()
        elif ch == ":" and open_groups and open_groups[-1][0] == "(":
            # "(words:number)": the number replaces the group's x1.1 and must end the group.
            flush()
            j = i + 1
            while j < n and text[j].isspace():
                j += 1
            match = _NUMBER.match(text, j)
            k = match.end() if match else j
            while k < n and text[k].isspace():
                k += 1
            if match is None:
                raise PromptError("bad weight, expected a number in '(words:number)'", text, j)
            if k >= n or text[k] != ")":
                raise PromptError("bad weight, expected ')' right after the number", text, k)
            value = float(match.group())
            if not 0.0 <= value <= MAX_WEIGHT:
                raise PromptError(f"weight {value:g} outside [0, {MAX_WEIGHT:g}]", text, j)
            _, _, group = open_groups.pop()
            multipliers[group] = value
            i = k + 1  # past the ')'
            continue
        else:
            add_char(ch, i)
        i += 1
    flush()
    if open_groups:
        kind, pos, _ = open_groups[-1]
        raise PromptError(f"unbalanced '{kind}' is never closed", text, pos)
    out = []
    for word, groups, pos in words:
        weight = math.prod(multipliers[g] for g in groups)
        if not 0.0 <= weight <= MAX_WEIGHT * (1 + 1e-9):
            raise PromptError(f"weight {weight:g} of {word!r} outside [0, {MAX_WEIGHT:g}]", text, pos)
        out.append((word, float(weight)))
    return out

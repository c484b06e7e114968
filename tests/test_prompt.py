"""Prompt emphasis syntax: weights and every PromptError case."""
import pytest

from encoders import PromptError, parse_prompt


def weights(text):
    return [(w, round(x, 6)) for w, x in parse_prompt(text)]


def test_plain_words_have_weight_one():
    assert parse_prompt("a red circle") == [("a", 1.0), ("red", 1.0), ("circle", 1.0)]


def test_empty_prompt_is_valid():
    assert parse_prompt("") == []
    assert parse_prompt("   ") == []
    assert parse_prompt("()") == []


@pytest.mark.parametrize("text, expected", [
    ("(red)", [("red", 1.1)]),
    ("((red))", [("red", 1.21)]),
    ("(((red)))", [("red", 1.331)]),
    ("[red]", [("red", round(1 / 1.1, 6))]),
    ("[[red]]", [("red", round(1 / 1.21, 6))]),
    ("(big red:1.5)", [("big", 1.5), ("red", 1.5)]),
    ("(red : 0.5 )", [("red", 0.5)]),
    ("(red:0)", [("red", 0.0)]),
    ("(red:10)", [("red", 10.0)]),
    ("(red:.5)", [("red", 0.5)]),
    ("((red:2) circle)", [("red", 2.2), ("circle", 1.1)]),
    ("[(red:2)]", [("red", round(2 / 1.1, 6))]),
    ("(red)circle", [("red", 1.1), ("circle", 1.0)]),
    ("a (red) [blue] c", [("a", 1.0), ("red", 1.1), ("blue", round(1 / 1.1, 6)), ("c", 1.0)]),
])
def test_emphasis_weights(text, expected):
    assert weights(text) == expected


def test_escapes_are_literal():
    assert parse_prompt(r"\(red\) \[x\] a\:b \\") == [("(red)", 1.0), ("[x]", 1.0), ("a:b", 1.0), ("\\", 1.0)]
    assert weights(r"(a\:1.5)") == [("a:1.5", 1.1)]


def test_colon_outside_round_brackets_is_text():
    assert parse_prompt("time: noon") == [("time:", 1.0), ("noon", 1.0)]
    assert weights("[a:b]") == [("a:b", round(1 / 1.1, 6))]


@pytest.mark.parametrize("text, position, fragment", [
    ("a (red", 2, "never closed"),
    ("a [red", 2, "never closed"),
    ("((red)", 0, "never closed"),
    ("a red)", 5, "no matching '('"),
    ("a red]", 5, "no matching '['"),
    ("(red]", 4, "cannot close"),
    ("[red)", 4, "cannot close"),
    ("(red:x)", 5, "expected a number"),
    ("(red:)", 5, "expected a number"),
    ("(red:", 5, "expected a number"),
    ("(red: 1.5 big)", 10, "expected ')'"),
    ("(red:1.2.3)", 8, "expected ')'"),
    ("(red:10.5)", 5, "outside [0, 10]"),
    ("(red:-1)", 5, "outside [0, 10]"),
    ("((((((((((((((((((((((((((red))))))))))))))))))))))))))", 26, "outside [0, 10]"),
    ("((red:9.5))", 2, "outside [0, 10]"),
])
def test_prompt_errors_name_the_position(text, position, fragment):
    with pytest.raises(PromptError) as info:
        parse_prompt(text)
    err = info.value
    assert err.position == position, str(err)
    assert fragment in str(err)
    assert f"position {position}" in str(err)
    # The caret sits under the offending character.
    lines = str(err).splitlines()
    assert lines[-2] == "  " + text and lines[-1] == "  " + " " * position + "^"


def test_prompt_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_prompt("(")


def test_non_string_is_a_type_error():
    with pytest.raises(TypeError):
        parse_prompt(None)

"""Stop rules: where decoding stops and what is kept, fed the way the decoder feeds them."""

from __future__ import annotations

import pytest

from cache_engine.completion.stop_rules import BracketScanner, CompletionStopper, CursorContext


def run(document: str, generated: str, language: str = "python", piece: int = 3) -> str:
    """Complete at the '|' in `document` with `generated`, fed a few characters at a time."""
    cursor = document.index("|")
    text = document.replace("|", "", 1)
    stopper = CompletionStopper(CursorContext.at(text, cursor, language))
    for start in range(0, len(generated), piece):
        if not stopper.push(generated[start : start + piece]):
            break
    return stopper.finish()


def test_mid_line_stops_at_end_of_line() -> None:
    assert run("x = foo(|)\n", "a, b\nprint(1)\n") == "a, b"


def test_mid_line_stops_before_unmatched_closing_bracket() -> None:
    assert run("print(|)\n", '"hi") + 1\n') == '"hi"'


def test_brackets_inside_strings_do_not_count() -> None:
    assert run("print(|)\n", '")", x)\n') == '")", x'


def test_text_repeating_the_rest_of_the_line_is_trimmed() -> None:
    assert run("if x|:\n    pass\n", " > 0:") == " > 0"


def test_result_that_only_repeats_what_follows_is_dropped() -> None:
    assert run("pri|nt(x)\n", "nt(x") == ""
    assert run("x = 1\n|\ny = 2\n", "y = 2\n") == ""


def test_blank_completion_is_dropped() -> None:
    assert run("x = |\n", "   \n\n") == ""


def test_empty_line_in_function_completes_until_the_block_ends() -> None:
    document = "def f(x):\n    y = x + 1\n    |\n"
    generated = "z = y * 2\n    return z\n\ndef g():\n    pass\n"
    assert run(document, generated) == "z = y * 2\n    return z"


def test_end_of_block_opener_completes_the_block() -> None:
    document = "class A:\n    def f(self):|\n"
    generated = "\n        a = 1\n        if a:\n            return a\n    def g(self):\n"
    assert run(document, generated) == "\n        a = 1\n        if a:\n            return a"


def test_else_continues_the_if_statement() -> None:
    document = "def f(x):\n    if x:|\n"
    generated = "\n        return 1\n    else:\n        return 2\nprint(f(1))\n"
    assert run(document, generated) == "\n        return 1\n    else:\n        return 2"


def test_end_of_simple_statement_stops_at_the_next_statement() -> None:
    assert run("def f():\n    x = foo(|\n", "1,\n        2)\n    y = 3\n") == "1,\n        2)"


def test_module_level_empty_line_completes_one_statement() -> None:
    document = "import os\n\n|\n"
    generated = "def f():\n    return os.getcwd()\n\n\ndef g():\n    pass\n"
    assert run(document, generated) == "def f():\n    return os.getcwd()"


def test_dedent_ends_the_unit_even_after_an_unclosed_bracket() -> None:
    document = "def f(path):\n    return |\n"
    generated = "os.path.join(path, os.path.join(path)\n\ndef g():\n    pass\n"
    assert run(document, generated) == "os.path.join(path, os.path.join(path)"


def test_line_repeating_the_previous_line_stops() -> None:
    document = "def f():\n    |\n"
    assert run(document, "a.append(1)\n    a.append(1)\n    a.append(1)\n") == "a.append(1)"


def test_a_block_that_loops_stops_where_it_repeats() -> None:
    document = "def fill(texts):\n    |\n"
    looping = "if not texts:\n        return None\n    if not texts:\n        return None\n"
    assert run(document, looping) == "if not texts:\n        return None"


def test_a_stuttering_line_is_cut_after_its_first_unit() -> None:
    document = "style = console.get_style(|\n"
    assert run(document, "self.r, self.r, self.r, self.r, self.r)") == "self.r,"
    # Separators and ordinary repetition stay.
    assert run("# |\n", "========\n") == "========"
    assert run("x = (|\n", "a, b, a, b)\n") == "a, b, a, b)"


def test_a_parameter_named_twice_is_cut_before_the_repeat() -> None:
    looping = "ation(value, value, value, value):\n    pass\n"
    assert run("def helper_0|\n", looping) == "ation(value"
    assert run("def f(value, |\n", "items, value=None):") == "items"
    # Names typed before the cursor count; `*args`, annotations and defaults are not names.
    assert run("async def f(self, *|\n", "args: int = self, **kwargs):") == (
        "args: int = self, **kwargs):"
    )
    # A repeat already before the cursor is the user's to fix; a call may repeat an argument.
    assert run("def f(a, a, |\n", "b):") == "b):"
    assert run("f(|\n", "value, value)") == "value, value)"
    # Commas and brackets inside a default string are text; a piece may end the line too.
    assert run("def f(|\n", 'x, y=",x", z):') == 'x, y=",x", z):'
    assert run("def f(|\n", 'a="a)", a):') == 'a="a)"'
    assert run("def f(|\n", "a, b, a):\n    pass", piece=9) == "a, b"


def test_line_repeating_the_suffix_stops() -> None:
    document = "def f():\n    x = 1\n    |\n    return total_value\n"
    assert run(document, "y = x\n    return total_value\n") == "y = x"


def test_multiline_allows_closing_a_bracket_opened_on_the_cursor_line() -> None:
    assert run("values = [|\n", "\n    1,\n    2,\n]\nprint(values)\n") == "\n    1,\n    2,\n]"


def test_other_languages_stop_at_a_blank_line_after_code() -> None:
    document = "function f() {\n  |\n}\n"
    generated = "let a = 1;\n  return a;\n\n  // more\n"
    assert run(document, generated, language="javascript") == "let a = 1;\n  return a;"


def test_other_languages_stop_before_an_unmatched_closing_brace() -> None:
    document = "function f() {\n  |\n}\n"
    assert run(document, "return 1;\n}\n", language="javascript") == "return 1;"


def test_other_languages_complete_a_block_after_an_opener() -> None:
    document = "if (x) {|\n"
    generated = "\n  y();\n}\nz();\n"
    assert run(document, generated, language="c") == "\n  y();\n}"


def test_feeding_one_character_at_a_time_gives_the_same_result() -> None:
    document = "def f(x):\n    |\n"
    generated = "if x:\n        return 1\n    return 2\nprint(f)\n"
    assert run(document, generated, piece=1) == run(document, generated, piece=50)


def test_crlf_document() -> None:
    document = "def f(x):\r\n    y = 1\r\n    |\r\n"
    assert run(document, "return y\n\ndef g():\n") == "return y"


@pytest.mark.parametrize(
    ("text", "unmatched_at"),
    [("a(b)c)", 5), ("'('x)", 4), ("# )\n)", 4), ("[(])", 2)],
)
def test_bracket_scanner(text: str, unmatched_at: int) -> None:
    scanner = BracketScanner([], "#")
    results = [scanner.feed(c) for c in text]
    assert results.index(False) == unmatched_at


def test_spaces_on_an_indented_empty_line_stop_decoding_and_keep_nothing() -> None:
    document = "def f(data):\n    if not data:\n        |\n"
    cursor = document.index("|")
    text = document.replace("|", "", 1)
    stopper = CompletionStopper(CursorContext.at(text, cursor, "python"))
    pushed = 0
    while stopper.push(" ") and pushed < 64:
        pushed += 1
    assert stopper.stopped and pushed <= 8
    assert stopper.finish() == ""


def test_a_line_indented_far_past_the_one_above_is_cut_before_it() -> None:
    document = "def f(x):\n    |\n"
    assert run(document, "y = x\n" + " " * 20 + "z") == "y = x"
    # Indentation that opens a block, and a deeper one under it, stays.
    generated = "if x:\n        for i in x:\n            print(i)"
    assert run(document, generated) == generated


@pytest.mark.parametrize(
    ("document", "generated"),
    [
        # Deep in a method: the line above is the cursor's, with the text before the cursor.
        (
            "class A:\n    def f(self, items):\n        for item in |\n",
            "items:\n            print(item)",
        ),
        (
            "class A:\n    def f(self, x):\n        |\n",
            "if x:\n            return 1\n        return 2",
        ),
        # At column 0 on an empty line in a block: the last non-blank line above sets the depth.
        ("def f(x):\n    if x:\n        y = 1\n\n|\n", "            return y"),
        # A continuation line aligned with its open bracket.
        ("def f(x, y):\n    |\n", "result = compute(x,\n                     y)"),
        ("def f(x, y):\n    result = compute(x,|\n", "\n                     y)"),
    ],
)
def test_code_indented_as_written_is_kept(document: str, generated: str) -> None:
    assert run(document, generated) == generated


def test_a_long_run_of_blanks_inside_a_line_is_cut_where_it_starts() -> None:
    assert run("x = |\n", "compute(1)" + " " * 20 + "# note") == "compute(1)"
    # Alignment before a comment is shorter than that, and blanks inside a string are text.
    assert run("x = |\n", "compute(1)    # note") == "compute(1)    # note"
    assert run("x = |\n", '"a' + " " * 20 + 'b"') == '"a' + " " * 20 + 'b"'


def test_blanks_after_the_blank_before_the_cursor_stop_decoding() -> None:
    document = "def f(x):\n    return |\n"
    cursor = document.index("|")
    stopper = CompletionStopper(CursorContext.at(document.replace("|", ""), cursor, "python"))
    pushed = 0
    while stopper.push(" ") and pushed < 64:
        pushed += 1
    assert stopper.stopped and pushed < 16
    assert stopper.finish() == ""

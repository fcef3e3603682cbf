"""When to stop decoding a completion, and how much of the decoded text to keep.

- The cursor mid-line (code after it on its line): one line, stopping at the end of the line.
- At the end of a line or on an empty line: several lines, up to the end of the syntactic unit:
  on an empty line, the enclosing block (at module level, one top-level statement); after code,
  the statement the cursor is in (with its block, when it opens one). Python's units come from
  tree-sitter; other languages use indentation.
- An unmatched closing bracket stops before it (in multi-line mode, brackets left open on the
  cursor's line count as open).
- Text that repeats what follows the cursor is trimmed, and so is a line that repeats the line
  before it or one the completion already wrote, and a line that stutters (the same few
  characters four times in a row): the usual ways a small model loops.
- A line that runs on in whitespace is cut where the run starts: indentation more than
  MAX_EXTRA_INDENT past the last non-blank line above (or the cursor's own indentation), unless
  a bracket is open (continuation lines align with it), or MAX_INNER_SPACES blanks inside a
  line, counting those typed before the cursor; blanks in strings and comments are text. The
  small model can emit one space token after another on an indented empty line until
  maxNewTokens, which kept nothing and held the worker for up to 2 s.
- A Python `def` whose parameter list would name a parameter twice (a SyntaxError, and another
  way the model loops: "(value, value, value)") is cut before the repeat.
- A completion that only repeats what follows the cursor, or is blank, is dropped.
- Mid-line, nothing is offered unless the rest of the line only closes what the cursor is in
  (brackets, quotes, punctuation): editors draw and insert a suggestion before that rest, and
  text that ignores real code after the cursor reads and lands as junk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Protocol

from tree_sitter import Language, Node, Parser

CLOSERS = {")": "(", "]": "[", "}": "{"}
OPENERS = frozenset("([{")
# A line starting with one of these continues the statement above rather than starting one.
CONTINUATION_KEYWORDS = ("else", "elif", "except", "finally", "catch")
# How far around the cursor the rules look; bounded so a huge file costs nothing extra.
SUFFIX_CHARS = 4000
SYNTAX_PREFIX_CHARS = 60_000
LINE_COMMENT = {"python": "#", "shellscript": "#", "ruby": "#", "r": "#", "yaml": "#"}


# The same unit of two or more characters four times in a row, within one line.
_STUTTER = re.compile(r"([^\n]{2,}?)\1{3,}")
# Indentation this much deeper than the line above, or this many blanks inside a line, is the
# model running on in whitespace, not code.
MAX_EXTRA_INDENT = 8
MAX_INNER_SPACES = 16
# Checked as the text grows, so a run is seen while it is the end of the text (and a run that
# a string or comment holds is seen only while that string or comment is open).
_INNER_SPACES = re.compile(rf"(?<=\S)[ \t]{{{MAX_INNER_SPACES},}}\Z")
# A Python function definition up to its parameter list's opening bracket.
_DEF_OPENING = re.compile(r"\s*(?:async\s+)?def\s+\w+\s*(?:\[[^\]]*\]\s*)?\(")
_PARAMETER_NAME = re.compile(r"\s*\**\s*([A-Za-z_]\w*)")
# What may follow the cursor on its line for a completion to be offered there.
MID_LINE_CLOSERS = frozenset(")]}>\"'`,;: \t")


def offers_completion_before(line_suffix: str) -> bool:
    """Whether a completion is offered with `line_suffix` after the cursor on its line."""
    return all(char in MID_LINE_CLOSERS for char in line_suffix)


@dataclass(frozen=True)
class CursorContext:
    """The text around the cursor that the stop rules look at."""

    line_prefix: str  # the cursor's line before the cursor
    line_suffix: str  # the cursor's line after the cursor, without the line break
    previous_line: str  # the line above the cursor's line
    suffix: str  # the text after the cursor (bounded)
    syntax_prefix: str  # from the start of the enclosing top-level statement to the cursor
    language_id: str

    @classmethod
    def at(cls, text: str, cursor: int, language_id: str) -> CursorContext:
        line_start = text.rfind("\n", 0, cursor) + 1
        line_end = text.find("\n", cursor)
        line_end = len(text) if line_end < 0 else line_end
        previous_start = text.rfind("\n", 0, max(line_start - 1, 0)) + 1
        previous_line = text[previous_start : max(line_start - 1, previous_start)]
        return cls(
            line_prefix=text[line_start:cursor],
            line_suffix=text[cursor:line_end].rstrip("\r"),
            previous_line=previous_line.rstrip("\r") if line_start > 0 else "",
            suffix=text[cursor : cursor + SUFFIX_CHARS],
            syntax_prefix=_top_level_statement_prefix(text, cursor),
            language_id=language_id,
        )

    @property
    def multiline(self) -> bool:
        return not self.line_suffix.strip()

    @property
    def blank_line(self) -> bool:
        return not self.line_prefix.strip()


class BlockEnd(Protocol):
    def leaves(self, generated: str, line_start: int, line_end: int) -> bool:
        """Whether generated[line_start:line_end], a complete non-blank line that is not the
        cursor's, lies outside the unit being completed."""
        ...


class CompletionStopper:
    """Fed decoded text piece by piece; says when to stop and what to keep."""

    def __init__(self, context: CursorContext):
        self.context = context
        self._text = ""
        self._cut: int | None = None
        self._scanned = 0
        self._line_start = 0
        self._line_index = 0
        self._previous_line = context.previous_line
        # The last non-blank line above the cursor's: the indentation a new line is held to.
        above = context.syntax_prefix[: len(context.syntax_prefix) - len(context.line_prefix)]
        self._line_above = _last_nonblank_line(above)
        open_brackets = _open_brackets(context.line_prefix) if context.multiline else []
        self._brackets = BracketScanner(open_brackets, LINE_COMMENT.get(context.language_id))
        self._block_end = block_end_for(context)
        self._suffix_line = _first_nonblank_line(context.suffix if context.multiline else "")
        self._written: set[str] = set()
        self._def_line_open = True  # the cursor's line may still gain parameters

    @property
    def stopped(self) -> bool:
        return self._cut is not None

    def push(self, piece: str) -> bool:
        """Add decoded text; False once a rule has fired (decoding should stop)."""
        if self._cut is not None:
            return False
        self._text += piece
        while self._scanned < len(self._text) and self._cut is None:
            index = self._scanned
            char = self._text[index]
            self._scanned += 1
            if char == "\n":
                if not self.context.multiline:
                    self._cut = index
                else:
                    self._end_line(index)
            elif not self._brackets.feed(char):
                self._cut = index
        if self._cut is None:
            self._check_stutter()
        if self._cut is None:
            self._check_whitespace_run()
        if self._cut is None and self._def_line_open and self.context.language_id == "python":
            self._check_duplicate_parameter()
        if self._cut is None and not self.context.multiline:
            self._check_line_suffix()
        return self._cut is None

    def finish(self) -> str:
        """The completion to show: trimmed by the rules, or '' when it adds nothing."""
        if self._cut is None and self.context.multiline and self._line_start < len(self._text):
            self._end_line(len(self._text))
        kept = self._text if self._cut is None else self._text[: self._cut]
        kept = kept.rstrip()
        if not kept.strip():
            return ""
        if self.context.suffix.lstrip().startswith(kept.strip()):
            return ""
        return kept

    def _end_line(self, line_end: int) -> None:
        """Rules that look at a whole line, run when `line_end` completes it."""
        start = self._line_start
        body = self._text[start:line_end].rstrip("\r")
        first = self._line_index == 0
        line = self.context.line_prefix + body if first else body
        stripped = line.strip()
        self._line_start = line_end + 1
        self._line_index += 1
        if not stripped:
            return
        # Cutting the cursor's own line keeps nothing: the cursor sits at its end.
        cut_here = 0 if first else start
        if stripped == self._previous_line.strip():
            self._cut = cut_here
        elif _substantial(stripped) and (
            stripped == self._suffix_line or stripped in self._written
        ):
            self._cut = cut_here
        elif not first and self._block_end.leaves(self._text, start, line_end):
            self._cut = start
        self._previous_line = line
        self._written.add(stripped)

    def _check_stutter(self) -> None:
        """A line that says the same few characters over and over ("self.r, self.r, ...")
        is cut after the first of them."""
        start = self._line_start
        for match in _STUTTER.finditer(self._text, start):
            unit = match.group(1)
            if any(c.isalnum() for c in unit):
                self._cut = match.start() + len(unit)
                return

    def _check_whitespace_run(self) -> None:
        """Cut the line being written where it runs on in whitespace (see the module doc).
        Not inside a string or comment, where blanks are text (aligned tables)."""
        if self._brackets.in_text:
            return
        start = self._text.rfind("\n") + 1
        first = start == 0
        written = self._text[start:]
        line = self.context.line_prefix + written if first else written
        offset = len(line) - len(written)  # where the generated part of `line` begins
        body = line.lstrip(" \t")
        if not body:
            # A continuation line may align with its open bracket, however far right.
            if self._brackets.stack:
                return
            above = self._line_above if first else self._previous_line
            allowed = _indent_width(above) + MAX_EXTRA_INDENT
            if first:
                allowed = max(allowed, _indent_width(self.context.line_prefix) + MAX_EXTRA_INDENT)
            if _indent_width(line) > allowed:
                self._cut = start
            return
        # Blanks typed before the cursor ("return |") count toward the run.
        search_from = len(line) - len(body)
        if first:
            search_from = max(search_from, len(self.context.line_prefix.rstrip(" \t")))
        match = _INNER_SPACES.search(line, search_from)
        if match is not None:
            self._cut = start + max(match.start() - offset, 0)

    def _check_duplicate_parameter(self) -> None:
        """On a `def` line, cut before the first parameter that repeats an earlier one's name.
        Looks at the cursor's line only, once more after the piece that ends it."""
        first_line = self._text.split("\n", 1)[0]
        self._def_line_open = "\n" not in self._text
        line = self.context.line_prefix + first_line
        opening = _DEF_OPENING.match(line)
        if opening is None:
            return
        cut = _repeated_parameter(line, opening.end())
        offset = len(self.context.line_prefix)
        if cut is not None and cut >= offset:
            self._cut = cut - offset

    def _check_line_suffix(self) -> None:
        rest = self.context.line_suffix.strip()
        if not rest:
            return
        stripped = self._text.rstrip()
        if stripped.endswith(rest):
            self._cut = len(stripped) - len(rest)


class BracketScanner:
    """Tracks bracket nesting outside strings and line comments."""

    def __init__(self, open_brackets: list[str], line_comment: str | None = None):
        self.stack = list(open_brackets)
        self._quote: str | None = None
        self._escaped = False
        self._in_comment = False
        self._comment = line_comment
        self._previous = ""

    @property
    def in_text(self) -> bool:
        """Inside a string or a line comment, where brackets and commas are only text."""
        return self._quote is not None or self._in_comment

    def feed(self, char: str) -> bool:
        """False when `char` is a closing bracket with nothing open to close."""
        previous, self._previous = self._previous, char
        if self._in_comment:
            self._in_comment = char != "\n"
            return True
        if self._quote is not None:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == self._quote or char == "\n":
                self._quote = None
            return True
        if char in "\"'`":
            self._quote = char
        elif self._comment == "#" and char == "#":
            self._in_comment = True
        elif self._comment is None and char == "/" and previous == "/":
            self._in_comment = True
        elif char in OPENERS:
            self.stack.append(char)
        elif char in CLOSERS:
            if not self.stack or self.stack[-1] != CLOSERS[char]:
                return False
            self.stack.pop()
        return True


def _repeated_parameter(line: str, start: int) -> int | None:
    """Where the parameter list opened before `line[start]` first repeats a name: the offset of
    the comma before the repeat. Only parameters ended by a comma or the closing bracket count,
    so a name still being written is not judged."""
    names: set[str] = set()
    scanner = BracketScanner(["("])
    segment_start = start
    for index in range(start, len(line)):
        char = line[index]
        depth = len(scanner.stack)
        in_text = scanner.in_text
        if not scanner.feed(char) or char == "\n":
            return None
        if in_text or depth != 1 or char not in ",)":
            continue
        name = _PARAMETER_NAME.match(line, segment_start)
        if name is not None and name.end() <= index:
            if name.group(1) in names:
                return segment_start - 1
            names.add(name.group(1))
        if char == ")":
            return None
        segment_start = index + 1
    return None


def _open_brackets(line: str) -> list[str]:
    scanner = BracketScanner([])
    for char in line:
        if not scanner.feed(char):
            scanner.stack.clear()
    return scanner.stack


def block_end_for(context: CursorContext) -> BlockEnd:
    indentation = IndentationBlockEnd(context)
    if context.language_id == "python" and context.syntax_prefix:
        return PythonBlockEnd(context, indentation)
    return indentation


class IndentationBlockEnd:
    """The unit ends at a dedent below the cursor's indentation; outside Python, an empty
    line ends it too, and after code a new line at the same indentation does."""

    def __init__(self, context: CursorContext):
        self._blank_line = context.blank_line
        self._base = _indent_width(context.line_prefix)
        self._python = context.language_id == "python"

    def dedents(self, line: str) -> bool:
        """Whether `line` starts a statement left of the cursor's indentation."""
        content = line.lstrip()
        if content[:1] in CLOSERS or content.startswith(CONTINUATION_KEYWORDS):
            return False
        return _indent_width(line) < self._base

    def leaves(self, generated: str, line_start: int, line_end: int) -> bool:
        line = generated[line_start:line_end]
        indent = _indent_width(line)
        content = line.lstrip()
        if content[:1] in CLOSERS:
            return False
        if indent < self._base:
            return not content.startswith(CONTINUATION_KEYWORDS)
        if self._blank_line:
            before = generated[:line_start].rstrip("\r\n \t")
            after_blank_line = generated[len(before) : line_start].count("\n") >= 2
            return not self._python and bool(before.strip()) and after_blank_line
        return indent == self._base and not content.startswith(CONTINUATION_KEYWORDS)


class PythonBlockEnd:
    """Finds the unit with tree-sitter on the enclosing top-level statement plus the output."""

    def __init__(self, context: CursorContext, fallback: IndentationBlockEnd):
        self._prefix = context.syntax_prefix.encode()
        self._blank_line = context.blank_line
        self._fallback = fallback
        self._parser = Parser(_python_language())

    def leaves(self, generated: str, line_start: int, line_end: int) -> bool:
        line = generated[line_start:line_end]
        # Error recovery can stretch a node over lines that plainly left it (after an unclosed
        # bracket, say); a dedent below the cursor's indentation always ends the unit.
        if self._fallback.dedents(line):
            return True
        cursor = len(self._prefix)
        source = self._prefix + generated[:line_end].encode()
        target = cursor + len(generated[:line_start].encode()) + len(line) - len(line.lstrip())
        tree = self._parser.parse(source)
        unit = self._unit(tree.root_node, source, cursor)
        if unit is None:
            return self._fallback.leaves(generated, line_start, line_end)
        return not unit.start_byte <= target < unit.end_byte

    def _unit(self, root: Node, source: bytes, cursor: int) -> Node | None:
        if self._blank_line:
            anchor = cursor + len(source[cursor:]) - len(source[cursor:].lstrip())
        else:
            anchor = len(source[:cursor].rstrip()) - 1
        if anchor < 0 or anchor >= len(source):
            return None
        node = root.descendant_for_byte_range(anchor, anchor + 1)
        while node is not None and node.parent is not None:
            if node.parent.type in ("block", "module"):
                break
            node = node.parent
        if node is None or node.parent is None or node.type == "ERROR":
            return None
        if self._blank_line and node.parent.type == "block":
            return node.parent
        return node


@cache
def _python_language() -> Language:
    import tree_sitter_python

    return Language(tree_sitter_python.language())


def _top_level_statement_prefix(text: str, cursor: int) -> str:
    """Text from the last line before the cursor that starts a top-level statement."""
    floor = max(0, cursor - SYNTAX_PREFIX_CHARS)
    line_start = text.rfind("\n", 0, cursor) + 1
    while True:
        first = text[line_start : line_start + 1]
        if line_start < cursor and first and not first.isspace() and first not in "#)]}'\"":
            return text[line_start:cursor]
        if line_start == 0:
            return text[:cursor]
        if line_start <= floor:
            return ""
        line_start = text.rfind("\n", 0, line_start - 1) + 1


def _first_nonblank_line(text: str) -> str:
    for line in text.splitlines()[:50]:
        if line.strip():
            return line.strip()
    return ""


def _last_nonblank_line(text: str) -> str:
    """Read from the end, line by line: `text` may be a long statement's whole prefix."""
    end = len(text)
    while end > 0:
        start = text.rfind("\n", 0, end) + 1
        if text[start:end].strip():
            return text[start:end]
        end = start - 1
    return ""


def _substantial(line: str) -> bool:
    """Long enough that repeating it is a loop, not a coincidence like a lone bracket."""
    return sum(c.isalnum() for c in line) >= 2


def _indent_width(line: str) -> int:
    return len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip(" \t"))

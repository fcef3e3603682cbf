"""Map text edits to the smallest batch of token edits, re-tokenizing only a window per change.

A fresh tokenization of the whole document is the reference: the ids produced here must equal it.
Each changed region is re-tokenized in a window of whole lines around it, and the window's ids are
spliced into the cached ids only where they differ. The window must be wide enough that text
outside it cannot change the tokens inside, and that the change cannot reach tokens outside it.
For regex pre-tokenizers of the GPT-2 / Qwen family no pre-token contains a newline followed by a
non-space character, so the pre-token holding the first visible character of an untouched line is
tokenized the same whatever precedes it. The window therefore reaches from such an anchor line
before the change to one after it, and the window's tokens must reproduce the cached tokens around
both anchors; otherwise the window doubles, up to the whole document.

Positions are byte offsets into the UTF-8 text, because byte-level BPE tokens may hold part of a
character. Some SentencePiece-style tokenizers prepend a space to the whole text (the "lead") that
their decoder strips again; token offsets include it, so a document's offsets run over
lead + text.
"""

from __future__ import annotations

import difflib
import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

from tokenizers import Tokenizer

from cache_engine.kv.token_edits import TokenEdit, apply_to_ids
from cache_engine.text.edit_plan import TextEditPlan, TokenizationStats, TokenizerRoundTripError

# A visible ASCII character cannot be regex whitespace, unlike bytes of non-ASCII characters
# such as U+00A0, so only these make a line an anchor line.
_VISIBLE = re.compile(rb"[\x21-\x7e]")
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# 0xFF never occurs in UTF-8, so an id without known bytes can never pass a text comparison.
_UNKNOWN_TOKEN = b"\xff<unknown token>"
# Anchor lines on each side before giving up on a window and taking the document's end instead.
_MAX_ANCHOR_LINES = 64
_ROUND_TRIP_PROBES = (
    "a",
    "class A(B):\n    return x  # \u00e9\u4e2d\U0001f600\n",
    "\tif a\r\n\t\tb = '<|endoftext|>'\x00\n\n\n",
    "x = [1, 22, 333]  \n",
)


_Merge = Literal["merge before", "merge after"]
_MERGE_BEFORE: _Merge = "merge before"
_MERGE_AFTER: _Merge = "merge after"


@dataclass(frozen=True)
class _Region:
    """Old [start, end) becomes new [new_start, new_end): str indices until converted to bytes."""

    start: int
    end: int
    new_start: int
    new_end: int


@dataclass(frozen=True)
class _Window:
    region: _Region
    first: int  # old token index where the re-tokenized window starts
    stop: int  # old token index where it ends (exclusive)
    edit: TokenEdit | None
    chars: int


class _Document:
    __slots__ = ("data", "ids", "lead", "offsets", "size", "text")

    def __init__(
        self, text: str, data: bytes, ids: Sequence[int], offsets: list[int], lead: int
    ) -> None:
        self.text = text
        self.data = data
        self.ids = ids
        self.offsets = offsets
        self.lead = lead
        self.size = len(ids)


class IncrementalTokenizer:
    """Turns text edits into token edits that keep cached ids equal to a fresh tokenization."""

    def __init__(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not isinstance(backend, Tokenizer):
            raise TypeError(
                f"need a tokenizers.Tokenizer or a fast transformers tokenizer, got "
                f"{type(tokenizer).__name__}"
            )
        serialized = backend.to_str()
        # A private copy, so that splitting special tokens never changes the caller's tokenizer.
        self._tokenizer = Tokenizer.from_str(serialized)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._tokenizer.encode_special_tokens = True
        spec = json.loads(serialized)
        self._special_ids = frozenset(t["id"] for t in spec.get("added_tokens", ()) if t["special"])
        self._token_bytes = self._join_table(self._build_token_bytes(spec))
        self._token_lengths = [len(b) for b in self._token_bytes]
        self._lead = self._probe_lead()
        self.stats = TokenizationStats()

    # -- tokenizer model ---------------------------------------------------------------------

    def _build_token_bytes(self, spec: dict[str, Any]) -> list[bytes]:
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        table = [_UNKNOWN_TOKEN] * (max(vocab.values()) + 1)
        added = {t["id"] for t in spec.get("added_tokens", ())}
        pending: list[int] = []
        byte_level = _uses_decoder(spec.get("decoder"), "ByteLevel")
        byte_fallback = bool((spec.get("model") or {}).get("byte_fallback"))
        unicode_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
        for token, token_id in vocab.items():
            if token_id in added:
                pending.append(token_id)
            elif byte_level and all(c in unicode_to_byte for c in token):
                table[token_id] = bytes(unicode_to_byte[c] for c in token)
            elif byte_fallback and (match := _BYTE_TOKEN.fullmatch(token)):
                table[token_id] = bytes([int(match.group(1), 16)])
            else:
                pending.append(token_id)
        if pending:
            # Decoding after an anchor token keeps decoders that treat the first token specially
            # (stripping a leading space, say) from distorting the token being measured.
            anchor = self._tokenizer.encode("a", add_special_tokens=False).ids[-1:]
            prefix = self._tokenizer.decode(anchor, skip_special_tokens=False)
            decoded = self._tokenizer.decode_batch(
                [anchor + [i] for i in pending], skip_special_tokens=False
            )
            for token_id, text in zip(pending, decoded, strict=True):
                if text.startswith(prefix) and "\ufffd" not in text:
                    table[token_id] = text[len(prefix) :].encode()
        return table

    def _join_table(self, table: list[bytes]) -> list[bytes]:
        """The table for checking ids against text, where every id text cannot produce fails.

        Special ids fail, and so do negative and too-large ids: the second half of the table
        catches -len(table) <= id < 0, which Python would otherwise index from the end.
        """
        checked = [_UNKNOWN_TOKEN if i in self._special_ids else b for i, b in enumerate(table)]
        return checked + [_UNKNOWN_TOKEN] * len(table)

    def _probe_lead(self) -> bytes:
        lead: bytes | None = None
        for probe in _ROUND_TRIP_PROBES:
            ids = self.encode(probe)
            joined = b"".join(self._token_bytes[i] for i in ids)
            data = probe.encode()
            decoded = self._tokenizer.decode(ids, skip_special_tokens=False)
            if decoded != probe or not joined.endswith(data):
                raise TokenizerRoundTripError(
                    f"tokenizer does not reproduce text from its ids: {probe!r} decodes as "
                    f"{decoded!r}"
                )
            this_lead = joined[: len(joined) - len(data)]
            if lead is not None and this_lead != lead:
                raise TokenizerRoundTripError(
                    f"tokenizer adds {lead!r} before one text and {this_lead!r} before another"
                )
            lead = this_lead
        return lead or b""

    # -- public API --------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """A fresh tokenization of document text; special-token strings stay ordinary text."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def text_bytes(self, ids: Sequence[int]) -> bytes:
        """The document bytes `ids` stand for. Unlike `decode`, a token's leading space is kept
        at the start too: generated text is inserted mid-document, never at its start."""
        table = self._token_bytes
        return b"".join(
            table[i] if table[i] is not _UNKNOWN_TOKEN else self.decode([i]).encode() for i in ids
        )

    def token_bytes(self) -> list[bytes]:
        """The UTF-8 bytes each token id stands for in document text, indexed by id; special
        ids and ids text cannot produce map to bytes no text contains."""
        return self._token_bytes[: len(self._token_bytes) // 2]

    def verify(self, text: str, ids: Sequence[int]) -> bool:
        """Whether ids are exactly the fresh tokenization of text; counts a mismatch if not."""
        ok = list(ids) == self.encode(text)
        if not ok:
            self.stats.mismatches += 1
        return ok

    def offsets(self, text: str, ids: Sequence[int]) -> list[int]:
        """Token boundary byte offsets (len(ids) + 1 of them) after checking ids decode to text.

        The offsets count the tokenizer's lead, if any, as part of the first token.
        """
        return self._document(text, ids, None).offsets

    def edits_for_range(
        self,
        old_text: str,
        old_ids: Sequence[int],
        start: int,
        end: int,
        new_text: str,
        offsets: list[int] | None = None,
    ) -> TextEditPlan:
        """Token edits for replacing old_text[start:end] (str indices) with new_text.

        `offsets` may be the offsets of (old_text, old_ids), from `offsets()` or a previous
        plan's `new_offsets`, to save recomputing them.
        """
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name}={value!r} is not an int")
            if not 0 <= value <= len(old_text):
                raise ValueError(
                    f"{name}={value} is out of range for a text of {len(old_text)} characters"
                )
        if start > end:
            raise ValueError(f"start={start} is after end={end}")
        document = self._document(old_text, old_ids, offsets)
        merged = old_text[:start] + new_text + old_text[end:]
        # Clients often resend more than changed (a whole line, or everything); the window
        # should follow what really changed.
        removed = old_text[start:end]
        head = _common_prefix(removed, new_text)
        tail = _common_suffix(removed, new_text, min(len(removed), len(new_text)) - head)
        start, end = start + head, end - tail
        replacement = _utf8(new_text[head : len(new_text) - tail], "replacement text")
        if start == end and not replacement:
            return self._plan(document, merged, [], 0)
        if old_text.isascii():
            byte_start, byte_end = start, end
        else:
            byte_start = len(old_text[:start].encode())
            byte_end = byte_start + len(old_text[start:end].encode())
        data = document.data[:byte_start] + replacement + document.data[byte_end:]
        region = _Region(byte_start, byte_end, byte_start, byte_start + len(replacement))
        return self._plan_regions(document, merged, data, [region])

    def edits_for_text(
        self,
        old_text: str,
        old_ids: Sequence[int],
        new_text: str,
        offsets: list[int] | None = None,
    ) -> TextEditPlan:
        """Token edits turning old_ids into the tokenization of new_text.

        Far-apart changes give separate edits; changes whose windows overlap share one.
        """
        document = self._document(old_text, old_ids, offsets)
        data = _utf8(new_text, "new text")
        regions = _changed_regions(old_text, new_text)
        if not regions:
            return self._plan(document, new_text, [], 0)
        if not (old_text.isascii() and new_text.isascii()):
            regions = _to_byte_regions(old_text, new_text, regions)
        return self._plan_regions(document, new_text, data, regions)

    # -- internals ---------------------------------------------------------------------------

    def _document(self, text: str, ids: Sequence[int], offsets: list[int] | None) -> _Document:
        data = _utf8(text, "text")
        lead = len(self._lead) if data else 0
        if offsets is None:
            try:
                offsets = list(accumulate(map(self._token_lengths.__getitem__, ids), initial=0))
            except (IndexError, TypeError):
                raise ValueError("ids contain a value that is not a token id") from None
            if offsets[-1] != lead + len(data) or (
                b"".join(map(self._token_bytes.__getitem__, ids))
                != (self._lead if data else b"") + data
            ):
                self._explain_mismatch(text, ids)
        elif len(offsets) != len(ids) + 1 or offsets[0] != 0 or offsets[-1] != lead + len(data):
            raise ValueError(
                f"offsets do not fit: {len(offsets)} offsets ending at {offsets[-1]} for "
                f"{len(ids)} ids and {lead + len(data)} bytes"
            )
        return _Document(text, data, ids, offsets, lead)

    def _explain_mismatch(self, text: str, ids: Sequence[int]) -> None:
        if not self._special_ids.isdisjoint(ids):
            raise ValueError("ids contain special tokens, which document text never produces")
        vocab_size = len(self._token_bytes) // 2
        if any(not 0 <= i < vocab_size or self._token_bytes[i] is _UNKNOWN_TOKEN for i in ids):
            raise ValueError("ids contain a value that is not a token id")
        raise TokenizerRoundTripError(
            f"cached ids ({len(ids)} tokens) do not decode to the text ({len(text)} characters)"
        )

    def _plan(
        self, document: _Document, new_text: str, edits: list[TokenEdit], chars: int
    ) -> TextEditPlan:
        self.stats.calls += 1
        return TextEditPlan(
            new_text=new_text,
            edits=edits,
            new_ids=apply_to_ids(document.ids, edits) if edits else list(document.ids),
            window_chars=chars,
            _old_offsets=document.offsets,
            _token_lengths=self._token_lengths,
        )

    def _plan_regions(
        self, document: _Document, new_text: str, new_data: bytes, regions: list[_Region]
    ) -> TextEditPlan:
        windows: list[_Window] = []
        # Merging regions whose first windows overlap up front saves re-tokenizing a growing
        # merged window once per region when many changes sit close together.
        grouped = regions[:1]
        stop = self._window_bounds(document, regions[0], 1, 1)[1]
        for region in regions[1:]:
            first, next_stop = self._window_bounds(document, region, 1, 1)[:2]
            if first < stop:
                previous = grouped[-1]
                grouped[-1] = _Region(
                    previous.start, region.end, previous.new_start, region.new_end
                )
            else:
                grouped.append(region)
            stop = max(stop, next_stop)
        regions = grouped
        index = 0
        while index < len(regions):
            region = regions[index]
            following = regions[index + 1] if index + 1 < len(regions) else None
            outcome = self._resolve(
                document,
                new_data,
                region,
                windows[-1] if windows else None,
                following.start if following is not None else None,
            )
            # Each window assumes the text around it is unchanged, so a window that would reach
            # a neighbouring change is re-tokenized together with it.
            if outcome == _MERGE_BEFORE:
                previous = windows.pop().region
                regions[index] = _Region(
                    previous.start, region.end, previous.new_start, region.new_end
                )
            elif outcome == _MERGE_AFTER:
                assert following is not None
                regions[index : index + 2] = [
                    _Region(region.start, following.end, region.new_start, following.new_end)
                ]
            else:
                windows.append(outcome)
                index += 1
        self.stats.regions += len(windows)
        edits = [w.edit for w in windows if w.edit is not None]
        return self._plan(document, new_text, edits, sum(w.chars for w in windows))

    def _resolve(
        self,
        document: _Document,
        new_data: bytes,
        region: _Region,
        previous: _Window | None,
        next_change: int | None,
    ) -> _Window | _Merge:
        left_lines = right_lines = 1
        while True:
            first, stop, left_anchor, right_anchor = self._window_bounds(
                document, region, left_lines, right_lines
            )
            if previous is not None and first < previous.stop:
                return _MERGE_BEFORE
            if next_change is not None and document.offsets[stop] - document.lead > next_change:
                return _MERGE_AFTER
            if first == 0 and stop == document.size:
                self.stats.full_retokenizations += 1
            outcome = self._splice(
                document, new_data, region, first, stop, left_anchor, right_anchor
            )
            if isinstance(outcome, _Window):
                if previous is not None and _conflict(previous.edit, outcome.edit):
                    return _MERGE_BEFORE
                return outcome
            self.stats.windows_widened += 1
            left_failed, right_failed = outcome
            if left_failed:
                left_lines = left_lines * 2 if left_lines < _MAX_ANCHOR_LINES else 0
            if right_failed:
                right_lines = right_lines * 2 if right_lines < _MAX_ANCHOR_LINES else 0

    def _window_bounds(
        self, document: _Document, region: _Region, left_lines: int, right_lines: int
    ) -> tuple[int, int, int, int]:
        """(first token, stop token, left anchor, right anchor) of a window around region."""
        data, offsets, lead = document.data, document.offsets, document.lead
        left = _anchor_before(data, data.rfind(b"\n", 0, region.start) + 1, left_lines)
        right = _anchor_after(data, data.find(b"\n", region.end), right_lines)
        first, left_anchor = 0, -1
        if left is not None:
            # From the newline before the anchor line: a line's first token may merge with a
            # space the tokenizer prepends to the window, a newline rarely does.
            first = max(0, bisect_right(offsets, max(0, left[0] - 1) + lead) - 1)
            # A window must start on a character so that it can be tokenized as text.
            while first > 0 and data[offsets[first] - lead] & 0xC0 == 0x80:
                first -= 1
            left_anchor = left[1] + lead
        stop, right_anchor = document.size, -1
        if right is not None:
            stop = min(document.size, bisect_left(offsets, right[1] + lead))
            while stop < document.size and data[offsets[stop] - lead] & 0xC0 == 0x80:
                stop += 1
            right_anchor = right[0] + lead
        return first, stop, left_anchor, right_anchor

    def _splice(
        self,
        document: _Document,
        new_data: bytes,
        region: _Region,
        first: int,
        stop: int,
        left_anchor: int,
        right_anchor: int,
    ) -> _Window | tuple[bool, bool]:
        """Re-tokenize old tokens [first, stop) with the change applied and diff them.

        Returns the window, or which sides failed the stability check.
        """
        old, offsets, lead = document.ids, document.offsets, document.lead
        text_start = max(0, offsets[first] - lead)
        text_stop = offsets[stop] - lead
        # Offsets passed in by the caller are only checked here, where they are used.
        expected = document.data[text_start:text_stop]
        if first == 0 and document.data:
            expected = self._lead + expected
        cached = b"".join(map(self._token_bytes.__getitem__, old[first:stop]))
        if cached != expected or len(cached) != offsets[stop] - offsets[first]:
            raise ValueError(
                f"ids and offsets do not match the text between tokens {first} and {stop}"
            )
        window_data = new_data[
            text_start + region.new_start - region.start : text_stop + region.new_end - region.end
        ]
        # A tokenizer that puts its lead (a space) before every text adds one the document does
        # not have here; when the window starts with that space, let the tokenizer supply it.
        skip = 0
        if first > 0 and self._lead and window_data.startswith(self._lead):
            skip = len(self._lead)
        window_text = window_data[skip:].decode()
        window_ids = self._tokenizer.encode(window_text, add_special_tokens=False).ids
        self.stats.tokens_retokenized += len(window_ids)
        self.stats.chars_retokenized += len(window_text)
        ends = list(accumulate(map(self._token_lengths.__getitem__, window_ids), initial=0))
        joined = b"".join(map(self._token_bytes.__getitem__, window_ids))
        window_lead = len(joined) - len(window_data)
        if first == 0:
            # The window opens the document, so its lead is the document's and must be exact.
            faithful = joined == (self._lead if window_data else b"") + window_data
        else:
            extra = window_lead + skip
            faithful = joined[:extra] in (b"", self._lead) and joined.endswith(window_data[skip:])
        if not faithful:
            raise TokenizerRoundTripError(
                f"tokenizer does not reproduce {window_text[:80]!r} from its ids"
            )
        count = len(window_ids)

        # Where the window starts or ends mid-document its outermost tokens may differ from a
        # fresh tokenization of the whole text. Skip those to the first token that matches the
        # cache at the same offset; that must happen no later than the left anchor.
        i0, k0 = 0, first
        if first > 0:
            base = offsets[first] - window_lead
            while True:
                if i0 >= count or k0 >= stop:
                    return True, False
                new_pos, old_pos = base + ends[i0], offsets[k0]
                if new_pos > left_anchor or old_pos > left_anchor:
                    return True, False
                if new_pos == old_pos and window_ids[i0] == old[k0]:
                    break
                if new_pos <= old_pos:
                    i0 += 1
                if old_pos <= new_pos:
                    k0 += 1
        # The same from the right end, no earlier than the right anchor.
        j0, m0 = count, stop
        if stop < document.size:
            base = offsets[stop] - ends[-1]
            while True:
                if j0 <= i0 or m0 <= k0:
                    return False, True
                new_pos, old_pos = base + ends[j0], offsets[m0]
                if new_pos <= right_anchor or old_pos <= right_anchor:
                    return False, True
                if new_pos == old_pos and window_ids[j0 - 1] == old[m0 - 1]:
                    break
                if new_pos >= old_pos:
                    j0 -= 1
                if old_pos >= new_pos:
                    m0 -= 1

        # Agreement from each matching point must cover that side's anchor token: only then is
        # the window's tokenization known to be the document's across the anchor.
        i, k = i0, k0
        while i < j0 and k < m0 and window_ids[i] == old[k]:
            i += 1
            k += 1
        if first > 0 and offsets[k] <= left_anchor:
            return True, False
        j, m = j0, m0
        while j > i0 and m > k0 and window_ids[j - 1] == old[m - 1]:
            j -= 1
            m -= 1
        if stop < document.size and offsets[m] > right_anchor:
            return False, True
        # Both runs may claim the same tokens when the change repeats its surroundings.
        overlap = max(i - j, k - m, 0)
        j += overlap
        m += overlap

        edit = None if (i == j and k == m) else TokenEdit(k, m, tuple(window_ids[i:j]))
        return _Window(region, first, stop, edit, len(window_text))


def _uses_decoder(decoder: dict[str, Any] | None, kind: str) -> bool:
    if not decoder:
        return False
    if decoder.get("type") == kind:
        return True
    return any(_uses_decoder(d, kind) for d in decoder.get("decoders") or ())


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte <-> printable character mapping, as used by ByteLevel.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as error:
        raise ValueError(f"{what} is not valid Unicode at index {error.start}") from None


def _anchor_before(data: bytes, line_start: int, count: int) -> tuple[int, int] | None:
    """(line start, first visible byte) of the count-th visible line before line_start.

    None when there is no such line or count is 0, meaning: reach back to the document start.
    """
    position = line_start
    while count and position > 0:
        start = data.rfind(b"\n", 0, position - 1) + 1
        match = _VISIBLE.search(data, start, position - 1)
        if match is not None:
            count -= 1
            if not count:
                return start, match.start()
        position = start
    return None


def _anchor_after(data: bytes, line_end: int, count: int) -> tuple[int, int] | None:
    """(first visible byte, line end) of the count-th visible line after the "\\n" at line_end."""
    if line_end < 0:
        return None
    position = line_end + 1
    while count:
        match = _VISIBLE.search(data, position)
        if match is None:
            return None
        newline = data.find(b"\n", match.start())
        position = len(data) if newline < 0 else newline + 1
        count -= 1
        if not count:
            return match.start(), position
    return None


def _conflict(before: TokenEdit | None, after: TokenEdit | None) -> bool:
    return (
        before is not None
        and after is not None
        and (before.end > after.start or before.start == before.end == after.start == after.end)
    )


def _common_prefix(a: str, b: str) -> int:
    limit = min(len(a), len(b))
    good, step = 0, 64
    # Gallop in growing slices (compared in C), then bisect inside the first differing slice.
    while good < limit:
        probe = min(limit, good + step)
        if a[good:probe] != b[good:probe]:
            bad = probe
            while bad - good > 1:
                middle = (good + bad) // 2
                if a[good:middle] == b[good:middle]:
                    good = middle
                else:
                    bad = middle
            return good
        good = probe
        step *= 2
    return limit


def _common_suffix(a: str, b: str, limit: int) -> int:
    good, step = 0, 64
    la, lb = len(a), len(b)
    while good < limit:
        probe = min(limit, good + step)
        if a[la - probe : la - good] != b[lb - probe : lb - good]:
            bad = probe
            while bad - good > 1:
                middle = (good + bad) // 2
                if a[la - middle : la - good] == b[lb - middle : lb - good]:
                    good = middle
                else:
                    bad = middle
            return good
        good = probe
        step *= 2
    return limit


def _lines(text: str) -> list[str]:
    # Not str.splitlines: it also splits at \r, \x0c, U+2028 and others that are not line ends
    # for the anchors.
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _changed_regions(old: str, new: str) -> list[_Region]:
    """The changed spans as str-index regions, one per run of changed lines."""
    prefix = _common_prefix(old, new)
    if prefix == len(old) == len(new):
        return []
    suffix = _common_suffix(old, new, min(len(old), len(new)) - prefix)
    old_stop, new_stop = len(old) - suffix, len(new) - suffix
    if "\n" not in old[prefix:old_stop] or "\n" not in new[prefix:new_stop]:
        return [_Region(prefix, old_stop, prefix, new_stop)]
    # Several edits far apart in one call: diff whole lines so that each gets its own region.
    start = old.rfind("\n", 0, prefix) + 1
    old_end = old.find("\n", old_stop)
    old_end = len(old) if old_end < 0 else old_end + 1
    new_end = old_end - len(old) + len(new)
    old_lines, new_lines = _lines(old[start:old_end]), _lines(new[start:new_end])
    old_starts = list(accumulate(map(len, old_lines), initial=start))
    new_starts = list(accumulate(map(len, new_lines), initial=start))
    matcher = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    regions = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        a0, a1, b0, b1 = old_starts[i1], old_starts[i2], new_starts[j1], new_starts[j2]
        head = _common_prefix(old[a0:a1], new[b0:b1])
        tail = _common_suffix(
            old[a0 + head : a1], new[b0 + head : b1], min(a1 - a0, b1 - b0) - head
        )
        regions.append(_Region(a0 + head, a1 - tail, b0 + head, b1 - tail))
    return regions


def _to_byte_regions(old: str, new: str, regions: list[_Region]) -> list[_Region]:
    out = []
    old_char = old_byte = new_char = new_byte = 0
    for region in regions:
        old_byte += len(old[old_char : region.start].encode())
        start = old_byte
        old_byte += len(old[region.start : region.end].encode())
        old_char = region.end
        new_byte += len(new[new_char : region.new_start].encode())
        new_start = new_byte
        new_byte += len(new[region.new_start : region.new_end].encode())
        new_char = region.new_end
        out.append(_Region(start, old_byte, new_start, new_byte))
    return out

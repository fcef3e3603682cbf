"""The continuations generated at recent places in a document, to draft from when asked again.

A user who makes a far edit by hand and comes back, deletes a character and types it again,
or moves away and returns, asks for a completion where one was made before. The model's
greedy output there rarely changes: the text around the cursor is the same, and a change far
away barely moves the next tokens. The ids generated last time are then a draft that one
verify pass can keep whole (`speculation.RecalledDraft`), so the ghost text costs about one
forward pass instead of one per token. Verification keeps the output exactly what plain
decoding gives; a recall that no longer holds costs one pass of rejected rows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

# The text around the cursor that names a place: what the model reads nearest to it. A change
# inside this span makes it a different place.
PLACE_CHARS_BEFORE = 256
PLACE_CHARS_AFTER = 64
# Places remembered per document, the least recently used forgotten first.
PLACES_REMEMBERED = 16

Place = tuple[str, str]


def place_at(text: str, cursor: int) -> Place:
    """The key of the place at str offset `cursor`."""
    before = text[max(0, cursor - PLACE_CHARS_BEFORE) : cursor]
    after = text[cursor : cursor + PLACE_CHARS_AFTER]
    return before, after


class CompletionRecall:
    """The token ids last generated at each of a document's recent places."""

    def __init__(self, capacity: int = PLACES_REMEMBERED) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._generated: OrderedDict[Place, tuple[int, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._generated)

    def recall(self, text: str, cursor: int) -> tuple[int, ...]:
        """What was generated last at this place (empty if nothing was)."""
        place = place_at(text, cursor)
        generated = self._generated.get(place, ())
        if generated:
            self._generated.move_to_end(place)
        return generated

    def remember(self, text: str, cursor: int, generated: Sequence[int]) -> None:
        """Keep what was generated at this place (nothing: forget the place)."""
        place = place_at(text, cursor)
        if not generated:
            self._generated.pop(place, None)
            return
        known = self._generated.get(place, ())
        # A generation cut short (cancelled, or stopped earlier by a changed setting) agrees
        # with the longer one it starts: keep that.
        if known[: len(generated)] != tuple(generated):
            self._generated[place] = tuple(generated)
        self._generated.move_to_end(place)
        while len(self._generated) > self.capacity:
            self._generated.popitem(last=False)

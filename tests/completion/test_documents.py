"""The document store: changes carried into windows and forward typing, and typing history."""

from __future__ import annotations

from cache_engine.completion.documents import HISTORY_VERSIONS, DocumentStore, ForwardTyping
from cache_engine.text.text_change import TextChange

URI = "file:///d.py"


def store_with(text: str) -> DocumentStore:
    store = DocumentStore()
    store.open(URI, text, 1, "python")
    return store


def test_typed_since_follows_typing_and_backspace_at_the_cursor() -> None:
    store = store_with("x = \n")
    store.change(URI, 2, [TextChange(4, 4, "f")])
    store.change(URI, 3, [TextChange(5, 5, "oo")])
    store.change(URI, 4, [TextChange(6, 7, "")])
    assert store.typed_since(URI, 1, 4) == "fo"
    assert store.typed_since(URI, 3, 7) is None  # backspace is measured from version 3's cursor
    assert store.typed_since(URI, 4, 6) == ""
    store.change(URI, 5, [TextChange(0, 0, "# far\n")])
    assert store.typed_since(URI, 1, 4) is None


def test_forward_typing_of_an_older_version_is_carried_forward() -> None:
    store = store_with("x = \n")
    store.change(URI, 2, [TextChange(4, 4, "c")])
    store.change(URI, 3, [TextChange(5, 5, "o")])
    # A completion started at version 1 finishes now, after "co" was typed.
    store.set_forward_typing(URI, 1, ForwardTyping(4, "compute(1)"))
    state = store.snapshot(URI).forward_typing
    assert state is not None and state.remainder_at(6) == "mpute(1)"


def test_forward_typing_is_dropped_when_the_history_is_gone() -> None:
    store = store_with("x = \n")
    for version in range(2, HISTORY_VERSIONS + 3):
        store.change(URI, version, [TextChange(4, 4, "a")])
    store.set_forward_typing(URI, 1, ForwardTyping(4, "aaaa"))
    assert store.snapshot(URI).forward_typing is None

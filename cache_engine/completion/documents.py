"""Open documents: the text mirror and the state that follows it through edits.

The mirror is updated on every change as soon as it arrives; the model's cache catches up later
(see `completion.py`). Changes arrive on the server's event loop while completions run in a
worker thread, so the store hands out immutable snapshots under a lock.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from cache_engine.completion.prompt_layout import ContextWindow
from cache_engine.text.text_change import DocumentError, TextChange

# Versions of changes kept for `set_forward_typing` and `typed_since`.
HISTORY_VERSIONS = 64

# JSON can carry lone UTF-16 surrogates, which no UTF-8 encoder accepts. Replacing each with
# U+FFFD keeps every offset where the client put it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text)
    return text


@dataclass(frozen=True)
class ForwardTyping:
    """The last completion shown at `anchor`, and what the user has typed there since."""

    anchor: int
    suggestion: str
    typed: str = ""

    def follow(self, change: TextChange) -> ForwardTyping | None:
        """The state after `change`, or None once the user does anything but type or backspace
        at the end of what they typed."""
        cursor = self.anchor + len(self.typed)
        if change.start == change.end == cursor:
            return replace(self, typed=self.typed + change.text)
        if not change.text and change.end == cursor and change.start >= self.anchor:
            return replace(self, typed=self.typed[: change.start - self.anchor])
        return None

    def remainder_at(self, cursor: int) -> str | None:
        """The rest of the suggestion when the typed text is a strict prefix of it."""
        if cursor != self.anchor + len(self.typed) or not self.typed:
            return None
        if len(self.typed) < len(self.suggestion) and self.suggestion.startswith(self.typed):
            return self.suggestion[len(self.typed) :]
        return None


@dataclass(frozen=True)
class DocumentSnapshot:
    uri: str
    text: str
    version: int
    language_id: str
    # The prompt window of each of the document's cached regions, by region id.
    windows: Mapping[int, ContextWindow]
    forward_typing: ForwardTyping | None


@dataclass
class _Document:
    text: str
    version: int
    language_id: str
    windows: dict[int, ContextWindow] = field(default_factory=dict)
    forward_typing: ForwardTyping | None = None
    # The latest changes, by the version each produced: a completion that finishes after the
    # user typed on can still be carried forward through them.
    history: deque[tuple[int, tuple[TextChange, ...]]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_VERSIONS)
    )

    def snapshot(self, uri: str) -> DocumentSnapshot:
        return DocumentSnapshot(
            uri,
            self.text,
            self.version,
            self.language_id,
            MappingProxyType(dict(self.windows)),
            self.forward_typing,
        )


class DocumentStore:
    """Thread-safe mirror of the open documents."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._documents: dict[str, _Document] = {}

    def open(self, uri: str, text: str, version: int, language_id: str) -> None:
        with self._lock:
            document = self._documents[uri] = _Document(_encodable(text), version, language_id)
            document.history.append((version, ()))

    def close(self, uri: str) -> None:
        with self._lock:
            if self._documents.pop(uri, None) is None:
                raise DocumentError(f"document {uri!r} is not open")

    def change(self, uri: str, version: int, changes: Sequence[TextChange]) -> str:
        """Apply changes in order (each against the text the previous one left); returns the
        new text. A change that does not fit leaves the document as it was."""
        with self._lock:
            document = self._get(uri)
            text, windows, forward = document.text, document.windows, document.forward_typing
            for change in changes:
                change.check(len(text))
                if not change.text.isascii():
                    change = replace(change, text=_encodable(change.text))
                text = change.apply(text)
                windows = {key: w.follow(change, text) for key, w in windows.items()}
                if forward is not None:
                    forward = forward.follow(change)
            document.text, document.windows, document.forward_typing = text, windows, forward
            document.history.append((version, tuple(changes)))
            document.version = version
            return text

    def snapshot(self, uri: str) -> DocumentSnapshot:
        with self._lock:
            return self._get(uri).snapshot(uri)

    def set_window(self, uri: str, version: int, region: int, window: ContextWindow) -> None:
        """Remember the window chosen for `region` at `version`; dropped if the text has moved
        on since, because the window was not carried through the newer changes."""
        with self._lock:
            document = self._documents.get(uri)
            if document is None:
                return
            if document.version == version:
                document.windows[region] = window
            else:
                document.windows.pop(region, None)

    def forget_window(self, uri: str, region: int) -> None:
        with self._lock:
            document = self._documents.get(uri)
            if document is not None:
                document.windows.pop(region, None)

    def forget_windows(self) -> None:
        """Make every document choose its windows afresh (the budget changed)."""
        with self._lock:
            for document in self._documents.values():
                document.windows.clear()

    def set_forward_typing(self, uri: str, version: int, state: ForwardTyping | None) -> None:
        """Remember the completion shown at `version`. If the text has moved on since, the
        state is carried through the changes made after it, when they are all still known."""
        with self._lock:
            document = self._documents.get(uri)
            if document is None:
                return
            if document.version == version:
                document.forward_typing = state
                return
            later = self._changes_since(document, version)
            if later is None or state is None:
                return
            for change in later:
                state = state.follow(change)
                if state is None:
                    return
            document.forward_typing = state

    def typed_since(self, uri: str, version: int, cursor: int) -> str | None:
        """The text typed at `cursor` since `version`, when every change since was typing or
        backspacing at the end of what was typed there; None otherwise."""
        with self._lock:
            document = self._documents.get(uri)
            if document is None:
                return None
            later = self._changes_since(document, version)
        if later is None:
            return None
        state: ForwardTyping | None = ForwardTyping(cursor, "")
        for change in later:
            state = state.follow(change) if state is not None else None
        return state.typed if state is not None else None

    @staticmethod
    def _changes_since(document: _Document, version: int) -> list[TextChange] | None:
        """The changes made after `version`, or None when they are no longer all known."""
        if document.version == version:
            return []
        history = list(document.history)
        versions = [v for v, _ in history]
        if version not in versions:
            return None
        index = versions.index(version)
        return [change for _, changes in history[index + 1 :] for change in changes]

    def __contains__(self, uri: object) -> bool:
        with self._lock:
            return uri in self._documents

    def uris(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._documents))

    def _get(self, uri: str) -> _Document:
        document = self._documents.get(uri)
        if document is None:
            raise DocumentError(f"document {uri!r} is not open")
        return document

"""The completion engine: per-document prompt caches kept in step with the text, and decoding.

Data flows one way: a document change updates the text mirror at once (`DocumentStore`); the
cache is synced lazily, right before a completion, from the prompt text it holds to the prompt
text the document gives now, as one batch of token edits. Syncing lazily batches every keystroke
since the last completion into one `apply_edits` call, and documents that are never completed
cost nothing; an eager sync in idle time would race with the next keystroke for the one worker.

Threading: `open_document`, `change_document`, `close_document` and `update_settings` are cheap
and may run on the server's event loop; `complete` and `release_closed` touch the model and
must run on the engine's single worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from cache_engine.completion.documents import DocumentSnapshot, DocumentStore, ForwardTyping
from cache_engine.completion.prompt_layout import (
    PLACEMENT_FILL,
    PromptText,
    PromptWindowPolicy,
    prompt_text,
)
from cache_engine.completion.settings import CompletionSettings, SettingsError
from cache_engine.completion.stop_rules import CompletionStopper, CursorContext
from cache_engine.kv.editable_cache import EditableCache, EditStats
from cache_engine.kv.token_edits import TokenEdit
from cache_engine.model.loading import LoadedModel
from cache_engine.text.incremental_tokenizer import IncrementalTokenizer
from cache_engine.text.text_change import DocumentError, TextChange, changed_span

log = logging.getLogger(__name__)

# A change confined to one span this short is re-tokenized as that span; wider or scattered
# changes go to `edits_for_text`, which finds the separate regions itself.
SINGLE_SPAN_CHARS = 512

CompletionSource = Literal["model", "forward_typing", "none"]


@dataclass(frozen=True)
class Completion:
    text: str
    source: CompletionSource
    reason: str  # why decoding stopped, or why nothing was generated
    tokens_generated: int = 0
    seconds: float = 0.0


@dataclass
class DocumentStats:
    tokens_cached: int = 0
    cache_bytes: int = 0
    last_edit: EditStats | None = None
    tokens_encoded_total: int = 0
    tokens_reused_total: int = 0
    cache_syncs: int = 0
    completions: int = 0
    last_completion_seconds: float | None = None
    last_completion_tokens: int = 0
    forward_typing_hits: int = 0
    evictions: int = 0

    def record_edit(self, stats: EditStats) -> None:
        self.last_edit = stats
        self.tokens_encoded_total += stats.tokens_encoded
        self.tokens_reused_total += stats.tokens_reused
        self.cache_syncs += 1

    def as_dict(self) -> dict[str, object]:
        result = asdict(self)
        result["last_edit_strategy"] = self.last_edit.strategy if self.last_edit else None
        return result


@dataclass
class _CacheSession:
    """What the worker keeps for one document: the cache and the prompt it holds.

    With FIM the cache holds [FIM_PREFIX] + ids(left) + [FIM_SUFFIX] + ids(right) +
    [FIM_MIDDLE]; `left_tokens` says where the left part ends.
    """

    stats: DocumentStats = field(default_factory=DocumentStats)
    cache: EditableCache | None = None
    prompt: PromptText | None = None
    left_tokens: int = 0

    def drop_cache(self) -> None:
        if self.cache is not None:
            self.cache.release()
        self.cache = None
        self.prompt = None
        self.left_tokens = 0


class CompletionEngine:
    def __init__(
        self,
        loaded: LoadedModel,
        settings: CompletionSettings | None = None,
        documents: DocumentStore | None = None,
    ):
        """`documents` may already hold documents opened before the model was loaded."""
        self.loaded = loaded
        self.tokenizer = IncrementalTokenizer(loaded.tokenizer)
        self.documents = documents if documents is not None else DocumentStore()
        self._settings = self._checked(settings or CompletionSettings())
        self._sessions: OrderedDict[str, _CacheSession] = OrderedDict()
        self._closed: list[_CacheSession] = []
        self._lock = threading.Lock()
        vocab = loaded.tokenizer.get_vocab()
        fim = loaded.fim
        self._fim_ids = (vocab[fim.prefix], vocab[fim.suffix], vocab[fim.middle]) if fim else None
        # Any of these ends the middle: the model has nothing more to insert.
        self._stop_ids = frozenset(loaded.eos_token_ids | set(self._fim_ids or ()))

    # ---- settings ------------------------------------------------------------------------

    @property
    def settings(self) -> CompletionSettings:
        return self._settings

    def update_settings(self, settings: CompletionSettings) -> None:
        """Takes effect at the next completion; raises SettingsError and keeps the old ones
        when the model cannot honour them."""
        previous = self._settings
        self._settings = self._checked(settings)
        if (previous.max_prompt_tokens, previous.suffix_share) != (
            settings.max_prompt_tokens,
            settings.suffix_share,
        ):
            self.documents.forget_windows()

    def _checked(self, settings: CompletionSettings) -> CompletionSettings:
        limit = getattr(self.loaded.model.config, "max_position_embeddings", None)
        if limit and settings.max_prompt_tokens + settings.max_new_tokens > limit:
            raise SettingsError(
                f"max_prompt_tokens ({settings.max_prompt_tokens}) + max_new_tokens "
                f"({settings.max_new_tokens}) exceeds the model's {limit} positions"
            )
        return settings

    # ---- documents (cheap; any thread) ---------------------------------------------------

    def open_document(self, uri: str, text: str, version: int, language_id: str) -> None:
        self.documents.open(uri, text, version, language_id)
        with self._lock:
            previous = self._sessions.pop(uri, None)
            if previous is not None:
                self._closed.append(previous)
            self._sessions[uri] = _CacheSession()

    def change_document(self, uri: str, version: int, changes: Sequence[TextChange]) -> str:
        return self.documents.change(uri, version, changes)

    def close_document(self, uri: str) -> None:
        """Forget the document; its cache is freed by the worker (`release_closed`)."""
        self.documents.close(uri)
        with self._lock:
            session = self._sessions.pop(uri, None)
            if session is not None:
                self._closed.append(session)

    # ---- worker --------------------------------------------------------------------------

    def release_closed(self) -> None:
        with self._lock:
            closed, self._closed = self._closed, []
        for session in closed:
            session.drop_cache()

    def complete(
        self,
        uri: str,
        cursor: int,
        *,
        version: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Completion:
        """A completion at str offset `cursor`; empty when the document moved past `version`
        or `should_stop` turned true. Raises DocumentError for an unknown document or a
        cursor outside the text."""
        started = time.perf_counter()
        self.release_closed()
        snapshot = self.documents.snapshot(uri)
        if not 0 <= cursor <= len(snapshot.text):
            raise DocumentError(
                f"cursor offset {cursor} is outside document {uri!r} of {len(snapshot.text)} "
                "characters"
            )
        if version is not None and snapshot.version != version:
            return Completion("", "none", f"document is at version {snapshot.version}")
        typed_ahead = self.typed_ahead(uri, cursor, version=snapshot.version)
        if typed_ahead is not None:
            return typed_ahead
        session = self._touch(uri)
        if should_stop():
            return Completion("", "none", "cancelled")
        settings = self._settings
        try:
            self._sync(uri, session, snapshot, cursor, settings)
            self._enforce_memory_budget(keep=uri, budget=settings.memory_budget_bytes)
            if should_stop():
                return Completion("", "none", "cancelled")
            context = CursorContext.at(snapshot.text, cursor, snapshot.language_id)
            text, generated, reason = self._decode(session, context, settings, should_stop)
        except Exception:
            # Whatever state the cache was left in, the next completion starts from scratch.
            session.drop_cache()
            raise
        if reason == "cancelled":
            return Completion("", "none", reason, generated, _since(started))
        # Line breaks stay "\n" whatever the file uses: clients convert them on insertion, and
        # Neovim would insert a "\r" literally.
        suggestion = ForwardTyping(cursor, text) if text else None
        self.documents.set_forward_typing(uri, snapshot.version, suggestion)
        seconds = _since(started)
        session.stats.completions += 1
        session.stats.last_completion_seconds = seconds
        session.stats.last_completion_tokens = generated
        return Completion(text, "model" if text else "none", reason, generated, seconds)

    def typed_ahead(
        self, uri: str, cursor: int, *, version: int | None = None
    ) -> Completion | None:
        """The rest of the last completion when the user has typed its beginning since; cheap
        and safe on any thread, so a server can answer it without waiting for the worker."""
        started = time.perf_counter()
        try:
            snapshot = self.documents.snapshot(uri)
        except DocumentError:
            return None
        if version is not None and snapshot.version != version:
            return None
        forward = snapshot.forward_typing
        remainder = forward.remainder_at(cursor) if forward is not None else None
        if remainder is None:
            return None
        with self._lock:
            session = self._sessions.get(uri)
            if session is not None:
                session.stats.forward_typing_hits += 1
        return Completion(remainder, "forward_typing", "typed ahead", 0, _since(started))

    def stats(self, uri: str | None = None) -> dict[str, dict[str, object]]:
        """Per-document statistics, for one document or all open ones."""
        with self._lock:
            sessions = list(self._sessions.items())
        return {key: session.stats.as_dict() for key, session in sessions if uri in (None, key)}

    # ---- internals -----------------------------------------------------------------------

    def _touch(self, uri: str) -> _CacheSession:
        with self._lock:
            session = self._sessions.get(uri)
            if session is None:
                if uri not in self.documents:
                    raise DocumentError(f"document {uri!r} is not open")
                session = self._sessions[uri] = _CacheSession()
            self._sessions.move_to_end(uri)
            return session

    def _sync(
        self,
        uri: str,
        session: _CacheSession,
        snapshot: DocumentSnapshot,
        cursor: int,
        settings: CompletionSettings,
    ) -> None:
        """Bring the cache to the prompt for `cursor`, editing it in one batch."""
        text = snapshot.text
        fim = self._fim_ids is not None
        policy = PromptWindowPolicy(
            settings.max_prompt_tokens, settings.suffix_share, settings.window_margin_lines
        )
        window = snapshot.window
        if window is None or not policy.keeps(text, cursor, window, fim=fim):
            window = policy.place(text, cursor, self._count_tokens, fim=fim)
        fill = PLACEMENT_FILL
        while True:
            prompt = prompt_text(text, cursor, window, fim)
            edits, new_ids, left_tokens = self._plan(session, prompt)
            if len(new_ids) <= settings.max_prompt_tokens or fill < 0.05:
                break
            # Lines tokenize a little differently alone than in context: shrink and retry.
            fill *= 0.8 * settings.max_prompt_tokens / len(new_ids)
            window = policy.place(text, cursor, self._count_tokens, fim=fim, fill=fill)
        self.documents.set_window(uri, snapshot.version, window)
        self._apply(session, edits, new_ids, settings)
        session.prompt = prompt
        session.left_tokens = left_tokens

    def _plan(
        self, session: _CacheSession, prompt: PromptText
    ) -> tuple[list[TokenEdit] | None, list[int], int]:
        """(edits from the cached prompt, or None to encode afresh; the new prompt's ids;
        the number of left-context tokens)."""
        cached = session.prompt
        if session.cache is None or len(session.cache) == 0 or cached is None:
            left_ids = self.tokenizer.encode(prompt.left)
            if self._fim_ids is None or prompt.right is None:
                return None, left_ids, len(left_ids)
            prefix, suffix, middle = self._fim_ids
            right_ids = self.tokenizer.encode(prompt.right)
            return None, [prefix, *left_ids, suffix, *right_ids, middle], len(left_ids)
        old_ids = session.cache.token_ids
        if self._fim_ids is None or prompt.right is None or cached.right is None:
            edits, left_ids = self._part_edits(cached.left, old_ids, prompt.left, 0)
            return edits, left_ids, len(left_ids)
        prefix, suffix, middle = self._fim_ids
        split = 1 + session.left_tokens
        left_edits, left_ids = self._part_edits(cached.left, old_ids[1:split], prompt.left, 1)
        right_edits, right_ids = self._part_edits(
            cached.right, old_ids[split + 1 : -1], prompt.right, split + 1
        )
        new_ids = [prefix, *left_ids, suffix, *right_ids, middle]
        return left_edits + right_edits, new_ids, len(left_ids)

    def _part_edits(
        self, old: str, old_ids: list[int], new: str, base: int
    ) -> tuple[list[TokenEdit], list[int]]:
        """Token edits for one part of the prompt, indexed in the whole cached sequence."""
        if old == new:
            return [], old_ids
        start, old_end, new_end = changed_span(old, new)
        if max(old_end, new_end) - start <= SINGLE_SPAN_CHARS:
            plan = self.tokenizer.edits_for_range(old, old_ids, start, old_end, new[start:new_end])
        else:
            plan = self.tokenizer.edits_for_text(old, old_ids, new)
        edits = [TokenEdit(e.start + base, e.end + base, e.new_ids) for e in plan.edits]
        return edits, list(plan.new_ids)

    def _apply(
        self,
        session: _CacheSession,
        edits: list[TokenEdit] | None,
        new_ids: list[int],
        settings: CompletionSettings,
    ) -> None:
        cache = session.cache
        if edits is not None and cache is not None:
            try:
                stats = cache.apply_edits(edits, strategy=settings.strategy)
            except ValueError as error:
                log.warning("cache edit failed (%s); re-encoding the prompt", error)
            else:
                if len(cache) == len(new_ids):
                    self._record(session, stats)
                    return
                log.error(
                    "cache holds %d tokens, expected %d: re-encoding", len(cache), len(new_ids)
                )
        if cache is None:
            limit = getattr(self.loaded.model.config, "max_position_embeddings", None)
            cache = session.cache = EditableCache(
                self.loaded.model,
                strategy=settings.strategy,
                initial_capacity=len(new_ids) + settings.max_new_tokens + 16,
                max_capacity=limit,
            )
        self._record(session, cache.reset(new_ids))

    def _record(self, session: _CacheSession, stats: EditStats) -> None:
        session.stats.record_edit(stats)
        if session.cache is not None:
            session.stats.tokens_cached = len(session.cache)
            session.stats.cache_bytes = session.cache.nbytes()

    def _decode(
        self,
        session: _CacheSession,
        context: CursorContext,
        settings: CompletionSettings,
        should_stop: Callable[[], bool],
    ) -> tuple[str, int, str]:
        """(completion text, tokens generated, why decoding stopped)."""
        cache = session.cache
        if cache is None or len(cache) == 0:
            return "", 0, "empty prompt"
        stopper = CompletionStopper(context)
        ids: list[int] = []
        decoded = ""
        reason = "max tokens"

        def on_token(token: int) -> bool:
            nonlocal decoded, reason
            if should_stop():
                reason = "cancelled"
                return False
            if token in self._stop_ids:
                reason = "end of text"
                return False
            ids.append(token)
            text = self.tokenizer.decode(ids)
            # A character split across tokens decodes as U+FFFD until its last byte arrives.
            if text.endswith("\ufffd") or not text.startswith(decoded):
                return True
            piece, decoded = text[len(decoded) :], text
            if not stopper.push(piece):
                reason = "stop rule"
                return False
            return True

        cache.generate(settings.max_new_tokens, on_token)
        return stopper.finish(), len(ids), reason

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def _enforce_memory_budget(self, *, keep: str, budget: int) -> None:
        """Drop least recently used caches until all fit `budget` (the one in use stays)."""
        with self._lock:
            sessions = list(self._sessions.items())
        total = sum(s.cache.nbytes() for _, s in sessions if s.cache is not None)
        for uri, session in sessions:
            if total <= budget:
                break
            if uri == keep or session.cache is None:
                continue
            total -= session.cache.nbytes()
            session.drop_cache()
            session.stats.evictions += 1
            session.stats.tokens_cached = 0
            session.stats.cache_bytes = 0
            log.info("evicted the cache of %s to stay within %d bytes", uri, budget)


def _since(started: float) -> float:
    return time.perf_counter() - started

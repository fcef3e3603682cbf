"""The completion engine: per-document prompt caches kept in step with the text, and decoding.

Each document keeps a few cached regions, one per prompt window the cursor has been in
(`regions.py`); a completion uses the region whose window keeps the cursor, edits its cache to
today's prompt, brings its stale tokens within the staleness budget, and decodes.

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
from dataclasses import dataclass
from typing import Literal

from cache_engine.completion.confidence import ConfidenceGate, ConfidenceTracker
from cache_engine.completion.documents import DocumentSnapshot, DocumentStore, ForwardTyping
from cache_engine.completion.prompt_layout import (
    PLACEMENT_FILL,
    ContextWindow,
    FimLayout,
    FimMarkers,
    PromptText,
    PromptWindowPolicy,
    assemble,
    part_starts,
    prompt_text,
)
from cache_engine.completion.regions import DocumentCaches, PromptRegion
from cache_engine.completion.settings import MODEL_CALIBRATED, CompletionSettings, SettingsError
from cache_engine.completion.speculation import PromptLookup, RecalledDraft
from cache_engine.completion.stale_refresh import refresh_after_edits, refresh_before_decoding
from cache_engine.completion.stats import DocumentStats
from cache_engine.completion.stop_rules import (
    CompletionStopper,
    CursorContext,
    offers_completion_before,
)
from cache_engine.kv.editable_cache import EditableCache
from cache_engine.kv.token_edits import TokenEdit
from cache_engine.model.document_ngrams import DocumentNgramMixture
from cache_engine.model.loading import LoadedModel
from cache_engine.text.incremental_tokenizer import IncrementalTokenizer
from cache_engine.text.text_change import DocumentError, TextChange, changed_span, line_suffix
from cache_engine.text.token_healing import TokenHealer

log = logging.getLogger(__name__)

# Refreshes run in chunks this long, so a new request waits at most one chunk's forward pass.
REFRESH_CHUNK = 64

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
    # Geometric-mean probability of the first line's tokens (see confidence.py); None when
    # nothing was generated.
    confidence: float | None = None


class CompletionEngine:
    def __init__(
        self,
        loaded: LoadedModel,
        settings: CompletionSettings | None = None,
        documents: DocumentStore | None = None,
        *,
        cuda_graphs: bool = False,
    ):
        """`documents` may already hold documents opened before the model was loaded.
        `cuda_graphs`: decode steps replayed from CUDA graphs (kv/decode_graph.py)."""
        if cuda_graphs and loaded.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, not {loaded.device}")
        self.cuda_graphs = cuda_graphs
        self.loaded = loaded
        self.tokenizer = IncrementalTokenizer(loaded.tokenizer)
        self.healer = TokenHealer(self.tokenizer)
        self.documents = documents if documents is not None else DocumentStore()
        self._settings = self._checked(settings or CompletionSettings())
        self._caches: OrderedDict[str, DocumentCaches] = OrderedDict()
        self._closed: list[DocumentCaches] = []
        self._lock = threading.Lock()
        self._clock = 0
        vocab = loaded.tokenizer.get_vocab()
        fim = loaded.fim
        self._markers = (
            FimMarkers(vocab[fim.prefix], vocab[fim.suffix], vocab[fim.middle]) if fim else None
        )
        markers = (self._markers.prefix, self._markers.suffix, self._markers.middle) if fim else ()
        # Any of these ends the middle: the model has nothing more to insert.
        self._stop_ids = frozenset(loaded.eos_token_ids | set(markers))
        declared = getattr(loaded.model.config, "fim_layouts", None) or ("psm",)
        self.model_fim_layouts: tuple[str, ...] = tuple(declared)
        gate = getattr(loaded.model.config, "completion_gate", None) or {}
        self.model_gate = ConfidenceGate(
            float(gate.get("min_confidence", 0.0)), float(gate.get("min_token_prob", 0.0))
        )

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

    def confidence_gate(self, settings: CompletionSettings | None = None) -> ConfidenceGate:
        """The gate and cut in force: the settings', or the model's calibrated ones for -1."""
        settings = settings or self._settings
        return ConfidenceGate(
            self.model_gate.min_confidence
            if settings.min_confidence == MODEL_CALIBRATED
            else settings.min_confidence,
            self.model_gate.min_token_prob
            if settings.min_token_prob == MODEL_CALIBRATED
            else settings.min_token_prob,
        )

    def fim_layout(self, settings: CompletionSettings | None = None) -> FimLayout | None:
        """The FIM layout prompts use under `settings`; None without FIM tokens."""
        if self._markers is None:
            return None
        chosen = (settings or self._settings).fim_layout
        if chosen == "auto":
            return "spm" if "spm" in self.model_fim_layouts else "psm"
        return chosen

    # ---- documents (cheap; any thread) ---------------------------------------------------

    def open_document(self, uri: str, text: str, version: int, language_id: str) -> None:
        self.documents.open(uri, text, version, language_id)
        with self._lock:
            previous = self._caches.pop(uri, None)
            if previous is not None:
                self._closed.append(previous)
            self._caches[uri] = DocumentCaches()

    def change_document(self, uri: str, version: int, changes: Sequence[TextChange]) -> str:
        return self.documents.change(uri, version, changes)

    def close_document(self, uri: str) -> None:
        """Forget the document; its caches are freed by the worker (`release_closed`)."""
        self.documents.close(uri)
        with self._lock:
            caches = self._caches.pop(uri, None)
            if caches is not None:
                self._closed.append(caches)

    # ---- worker --------------------------------------------------------------------------

    def release_closed(self) -> None:
        with self._lock:
            closed, self._closed = self._closed, []
        for caches in closed:
            caches.drop_all()

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
        snapshot = self._snapshot_at(uri, cursor)
        if version is not None and snapshot.version != version:
            return Completion("", "none", f"document is at version {snapshot.version}")
        if not self._offers_at(snapshot.text, cursor):
            return Completion("", "none", "code after the cursor on its line")
        typed_ahead = self.typed_ahead(uri, cursor, version=snapshot.version)
        if typed_ahead is not None:
            return typed_ahead
        caches = self._document_caches(uri)
        if should_stop():
            return Completion("", "none", "cancelled")
        settings = self._settings
        region: PromptRegion | None = None
        try:
            region = self._sync(uri, caches, snapshot, cursor, settings)
            self._enforce_memory_budget(keep=region, budget=settings.memory_budget_bytes)
            self._refresh_before_decoding(caches, region, settings, should_stop)
            if should_stop():
                return Completion("", "none", "cancelled")
            context = CursorContext.at(snapshot.text, cursor, snapshot.language_id)
            gate = self.confidence_gate(settings)
            recalled = caches.recall.recall(snapshot.text, cursor)
            text, generated, reason, confidence, ids = self._decode(
                region, context, settings, gate, should_stop, caches.stats, recalled
            )
            caches.recall.remember(snapshot.text, cursor, ids)
        except Exception:
            # Whatever state the cache was left in, the next completion starts from scratch.
            if region is not None:
                region.drop_cache()
            raise
        if reason == "cancelled":
            if not text:
                return Completion("", "none", reason, generated, _since(started))
            reason = "stopped at a line boundary"
        if text and gate.min_confidence > 0 and (confidence or 0) < gate.min_confidence:
            caches.stats.below_confidence_gate += 1
            reason = (
                f"confidence {confidence or 0:.3f} is below minConfidence {gate.min_confidence:g}"
            )
            text = ""
        # Line breaks stay "\n" whatever the file uses: clients convert them on insertion, and
        # Neovim would insert a "\r" literally.
        suggestion = ForwardTyping(cursor, text) if text else None
        self.documents.set_forward_typing(uri, snapshot.version, suggestion)
        seconds = _since(started)
        caches.stats.completions += 1
        caches.stats.last_completion_seconds = seconds
        caches.stats.last_completion_tokens = generated
        source: CompletionSource = "model" if text else "none"
        return Completion(text, source, reason, generated, seconds, confidence)

    def prepare(
        self, uri: str, cursor: int, *, should_stop: Callable[[], bool] = lambda: False
    ) -> bool:
        """Idle work for a completion at `cursor`: sync the cache to today's text and refresh
        every stale token, in chunks, checking `should_stop` between them. Returns whether the
        cache is now exact. Raises DocumentError like `complete`."""
        self.release_closed()
        snapshot = self._snapshot_at(uri, cursor)
        caches = self._document_caches(uri)
        settings = self._settings
        # Only a region the cursor is still in is worth the work; an evicted or left one
        # would cost a fresh encode that nobody may ask for.
        active = caches.active
        window = snapshot.windows.get(active.id) if active is not None else None
        fim = self.fim_layout(settings) is not None
        if (
            active is None
            or active.cache is None
            or window is None
            or not self._policy(settings).keeps(snapshot.text, cursor, window, fim=fim)
        ):
            return False
        region: PromptRegion | None = None
        try:
            region = self._sync(uri, caches, snapshot, cursor, settings)
            cache = region.cache
            if cache is None:
                return False
            if cache.stale_tokens and not should_stop():
                stats = cache.refresh_stale(chunk=REFRESH_CHUNK, should_stop=should_stop)
                caches.stats.record_refresh(stats)
        except Exception:
            if region is not None:
                region.drop_cache()
            raise
        self._record_state(caches, region)
        return region.cache is not None and region.cache.stale_tokens == 0

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
        if remainder is not None and not self._offers_at(snapshot.text, cursor):
            remainder = None
        if remainder is None:
            return None
        with self._lock:
            caches = self._caches.get(uri)
            if caches is not None:
                caches.stats.forward_typing_hits += 1
        return Completion(remainder, "forward_typing", "typed ahead", 0, _since(started))

    def stats(self, uri: str | None = None) -> dict[str, dict[str, object]]:
        """Per-document statistics, for one document or all open ones."""
        with self._lock:
            documents = list(self._caches.items())
        return {key: caches.stats.as_dict() for key, caches in documents if uri in (None, key)}

    def active_region(self, uri: str) -> PromptRegion | None:
        """The region the last completion in `uri` used (for tests and benchmarks)."""
        with self._lock:
            caches = self._caches.get(uri)
        return caches.active if caches is not None else None

    # ---- internals -----------------------------------------------------------------------

    def _offers_at(self, text: str, cursor: int) -> bool:
        return self._settings.mid_line == "always" or offers_completion_before(
            line_suffix(text, cursor)
        )

    def _snapshot_at(self, uri: str, cursor: int) -> DocumentSnapshot:
        snapshot = self.documents.snapshot(uri)
        if not 0 <= cursor <= len(snapshot.text):
            raise DocumentError(
                f"cursor offset {cursor} is outside document {uri!r} of {len(snapshot.text)} "
                "characters"
            )
        return snapshot

    def _document_caches(self, uri: str) -> DocumentCaches:
        with self._lock:
            caches = self._caches.get(uri)
            if caches is None:
                if uri not in self.documents:
                    raise DocumentError(f"document {uri!r} is not open")
                caches = self._caches[uri] = DocumentCaches()
            self._caches.move_to_end(uri)
            return caches

    def _sync(
        self,
        uri: str,
        caches: DocumentCaches,
        snapshot: DocumentSnapshot,
        cursor: int,
        settings: CompletionSettings,
    ) -> PromptRegion:
        """Bring a region's cache to the prompt for `cursor`, editing it in one batch."""
        text = snapshot.text
        layout = self.fim_layout(settings)
        fim = layout is not None
        policy = self._policy(settings)
        region, window = self._choose_region(uri, caches, snapshot, cursor, policy, settings)
        fill = PLACEMENT_FILL
        while True:
            prompt = prompt_text(text, cursor, window, fim)
            if settings.heal_tokens:
                healing = self.healer.split(prompt.left)
                prompt = PromptText(healing.kept, prompt.right, healing.healed)
            edits, new_ids, left_tokens, right_tokens = self._plan(region, prompt, layout)
            if len(new_ids) <= settings.max_prompt_tokens or fill < 0.05:
                break
            # Lines tokenize a little differently alone than in context: shrink and retry.
            fill *= 0.8 * settings.max_prompt_tokens / len(new_ids)
            window = policy.place(text, cursor, self._count_tokens, fim=fim, fill=fill)
        self.documents.set_window(uri, snapshot.version, region.id, window)
        self._apply(caches, region, edits, new_ids, settings)
        region.prompt = prompt
        region.layout = layout if prompt.right is not None else None
        region.left_tokens, region.right_tokens = left_tokens, right_tokens
        return region

    def _policy(self, settings: CompletionSettings) -> PromptWindowPolicy:
        return PromptWindowPolicy(
            settings.max_prompt_tokens, settings.suffix_share, settings.window_margin_lines
        )

    def _choose_region(
        self,
        uri: str,
        caches: DocumentCaches,
        snapshot: DocumentSnapshot,
        cursor: int,
        policy: PromptWindowPolicy,
        settings: CompletionSettings,
    ) -> tuple[PromptRegion, ContextWindow]:
        """The region to complete in and its window.

        The most recently used region whose window keeps the cursor wins. Otherwise a fresh
        window is placed, and it goes to the region whose window overlaps it by at least half
        (the window slid), or else to a new region; beyond `max_regions` the least recently
        used region makes room.
        """
        text, windows = snapshot.text, snapshot.windows
        fim = self.fim_layout(settings) is not None
        self._clock += 1
        for region in list(caches.regions):
            if region.id not in windows or region.cache is None:
                # Its window was not carried through newer text: it cannot be placed.
                caches.remove(region)
                self.documents.forget_window(uri, region.id)
        for region in reversed(caches.regions):
            window = windows[region.id]
            if policy.keeps(text, cursor, window, fim=fim):
                if region is not caches.active:
                    caches.stats.region_returns += 1
                caches.touch(region, self._clock)
                return region, window
        window = policy.place(text, cursor, self._count_tokens, fim=fim)
        best: PromptRegion | None = None
        best_overlap = 0
        for region in caches.regions:
            other = windows[region.id]
            overlap = min(other.end, window.end) - max(other.start, window.start)
            if overlap > best_overlap:
                best, best_overlap = region, overlap
        if best is not None and 2 * best_overlap >= window.end - window.start:
            caches.touch(best, self._clock)
            return best, window
        while len(caches.regions) >= settings.max_regions:
            oldest = caches.regions[0]
            caches.remove(oldest)
            self.documents.forget_window(uri, oldest.id)
        region = caches.new_region()
        caches.touch(region, self._clock)
        return region, window

    def _plan(
        self, region: PromptRegion, prompt: PromptText, layout: FimLayout | None
    ) -> tuple[list[TokenEdit] | None, list[int], int, int]:
        """(edits from the cached prompt, or None to encode afresh; the new prompt's ids;
        the number of left-context and right-context tokens)."""
        if prompt.right is None:
            layout = None
        cached = region.prompt
        reusable = (
            region.cache is not None
            and len(region.cache) > 0
            and cached is not None
            and region.layout == layout
            and (cached.right is None) == (prompt.right is None)
        )
        if not reusable:
            left_ids = self.tokenizer.encode(prompt.left)
            if layout is None or prompt.right is None:
                return None, left_ids, len(left_ids), 0
            right_ids = self.tokenizer.encode(prompt.right)
            new_ids = assemble(layout, self._markers, left_ids, right_ids)
            return None, new_ids, len(left_ids), len(right_ids)
        assert region.cache is not None and cached is not None
        old_ids = region.cache.token_ids
        if layout is None or prompt.right is None or cached.right is None:
            edits, left_ids = self._part_edits(cached.left, old_ids, prompt.left, 0)
            return edits, left_ids, len(left_ids), 0
        left_at, right_at = part_starts(layout, region.left_tokens, region.right_tokens)
        left_edits, left_ids = self._part_edits(
            cached.left, old_ids[left_at : left_at + region.left_tokens], prompt.left, left_at
        )
        right_edits, right_ids = self._part_edits(
            cached.right, old_ids[right_at : right_at + region.right_tokens], prompt.right, right_at
        )
        new_ids = assemble(layout, self._markers, left_ids, right_ids)
        return left_edits + right_edits, new_ids, len(left_ids), len(right_ids)

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
        caches: DocumentCaches,
        region: PromptRegion,
        edits: list[TokenEdit] | None,
        new_ids: list[int],
        settings: CompletionSettings,
    ) -> None:
        cache = region.cache
        if edits is not None and cache is not None:
            try:
                stats = cache.apply_edits(edits, strategy=settings.strategy)
            except ValueError as error:
                log.warning("cache edit failed (%s); re-encoding the prompt", error)
            else:
                if len(cache) == len(new_ids):
                    # A sync that found nothing changed (the idle refresh's, a repeated request)
                    # is no edit: recording it would hide the last real one from the stats.
                    if edits:
                        caches.stats.record_edit(stats)
                        if stats.strategy == "pie" and settings.refresh_after_edit:
                            for refreshed in refresh_after_edits(
                                cache, edits, settings.refresh_after_edit
                            ):
                                caches.stats.record_refresh(refreshed)
                    self._record_state(caches, region)
                    return
                log.error(
                    "cache holds %d tokens, expected %d: re-encoding", len(cache), len(new_ids)
                )
        if cache is None:
            limit = getattr(self.loaded.model.config, "max_position_embeddings", None)
            cache = region.cache = EditableCache(
                self.loaded.model,
                strategy=settings.strategy,
                initial_capacity=len(new_ids) + settings.max_new_tokens + 16,
                max_capacity=limit,
                cuda_graphs=self.cuda_graphs,
            )
        caches.stats.record_edit(cache.reset(new_ids))
        self._record_state(caches, region)

    def _refresh_before_decoding(
        self,
        caches: DocumentCaches,
        region: PromptRegion,
        settings: CompletionSettings,
        should_stop: Callable[[], bool],
    ) -> None:
        if region.cache is None:
            return
        stats = refresh_before_decoding(region.cache, settings, should_stop)
        if stats is not None:
            caches.stats.record_refresh(stats)
            self._record_state(caches, region)

    def _record_state(self, caches: DocumentCaches, region: PromptRegion) -> None:
        stats = caches.stats
        caches.record_sizes()
        if region.cache is not None:
            stats.stale_tokens = region.cache.stale_tokens
            stats.exact_tokens = region.cache.exact_tokens

    def _decode(
        self,
        region: PromptRegion,
        context: CursorContext,
        settings: CompletionSettings,
        gate: ConfidenceGate,
        should_stop: Callable[[], bool],
        stats: DocumentStats,
        recalled: Sequence[int] = (),
    ) -> tuple[str, int, str, float | None, list[int]]:
        """(completion text, tokens generated, why decoding stopped, its confidence, the ids
        generated). `recalled`: the ids generated at this place before, to draft from."""
        cache = region.cache
        if cache is None or len(cache) == 0:
            return "", 0, "empty prompt", None, []
        healed = region.prompt.healed if region.prompt is not None else ""
        heal_bytes = len(healed.encode("utf-8"))
        stopper = CompletionStopper(context)
        tracker = ConfidenceTracker(gate.min_token_prob)
        produced = bytearray()
        decoded = ""
        generated = 0
        # Tokens that only re-create the healed text do not count against maxNewTokens.
        suggested = 0
        reason = "max tokens"

        def on_token(token: int, log_prob: float) -> bool:
            nonlocal decoded, reason, generated, suggested
            if should_stop():
                reason = "cancelled"
                return False
            if token in self._stop_ids:
                reason = "end of text"
                return False
            data = self.tokenizer.text_bytes([token])
            suggesting = len(produced) + len(data) > heal_bytes
            if suggesting:
                if not tracker.admits(log_prob):
                    reason = "low-confidence token"
                    return False
                tracker.record(len(decoded), log_prob)
                suggested += 1
            generated += 1
            produced.extend(data)
            if len(produced) < heal_bytes:
                return True
            # The constraint made the output start with the healed bytes.
            text = produced[heal_bytes:].decode("utf-8", errors="replace")
            # A character split across tokens decodes as U+FFFD until its last byte arrives.
            if text.endswith("\ufffd") or not text.startswith(decoded):
                return True
            piece, decoded = text[len(decoded) :], text
            if not stopper.push(piece):
                reason = "stop rule"
                return False
            return suggested < settings.max_new_tokens

        draft: RecalledDraft | None = None
        if settings.speculative_tokens:
            lookup = PromptLookup(settings.speculative_tokens)
            draft = RecalledDraft(recalled, len(cache), lookup)
        constraint = self.healer.constraint(healed)
        choose = self._chooser(region, settings)
        # Each healing token spells at least one byte of the healed text.
        limit = settings.max_new_tokens + heal_bytes
        ids = cache.generate(limit, on_token, draft=draft, constraint=constraint, choose=choose)
        if draft is not None:
            stats.speculative_drafted_total += draft.drafted
            stats.speculative_accepted_total += draft.accepted
            stats.recalled_drafts += draft.recalled_tokens > 0
        if choose is not None:
            stats.ngram_chosen_tokens += choose.overruled
        kept = stopper.finish()
        if reason == "cancelled":
            # What is ready up to a line boundary still serves the user typing along it.
            kept = kept[: kept.rfind("\n")] if "\n" in kept else ""
        return kept, generated, reason, tracker.confidence(kept), ids

    def next_token_chooser(self, uri: str) -> DocumentNgramMixture | None:
        """What chooses each token of a completion from the document's active prompt, as
        `complete` decodes it: None where the model's most likely token is taken."""
        region = self.active_region(uri)
        return None if region is None else self._chooser(region, self._settings)

    def _chooser(
        self, region: PromptRegion, settings: CompletionSettings
    ) -> DocumentNgramMixture | None:
        if not settings.document_ngram_weight:
            return None
        # The region's own layout: the cache holds the prompt as it was last synced.
        layout = region.layout
        left_end = None
        if layout is not None:
            left_at, _ = part_starts(layout, region.left_tokens, region.right_tokens)
            left_end = left_at + region.left_tokens
        return DocumentNgramMixture(
            settings.document_ngram_weight, left_end=left_end, never_follow=self._stop_ids
        )

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def _enforce_memory_budget(self, *, keep: PromptRegion, budget: int) -> None:
        """Drop least recently used region caches until all fit `budget` (the one in use
        stays)."""
        with self._lock:
            documents = list(self._caches.items())
        regions = [
            (r.last_used, uri, caches, r) for uri, caches in documents for r in caches.regions
        ]
        total = sum(r.nbytes() for *_, r in regions)
        for _, uri, caches, region in sorted(regions, key=lambda item: item[0]):
            if total <= budget:
                break
            if region is keep or region.cache is None:
                continue
            total -= region.nbytes()
            caches.remove(region)
            self.documents.forget_window(uri, region.id)
            caches.stats.evictions += 1
            caches.record_sizes()
            log.info("evicted a cached region of %s to stay within %d bytes", uri, budget)


def _since(started: float) -> float:
    return time.perf_counter() - started

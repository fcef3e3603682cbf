"""The completion engine with the shipped tokenizer and a small random-weight Llama."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cache_engine.completion.documents import ForwardTyping
from cache_engine.completion.engine import CompletionEngine
from cache_engine.completion.prompt_layout import ContextWindow, assemble
from cache_engine.completion.settings import CompletionSettings, SettingsError
from cache_engine.text.text_change import DocumentError, TextChange, changed_span

URI = "file:///work/example.py"
SOURCE = "import os\n\n\ndef area(width, height):\n    return width * height\n\n" + "".join(
    f"def helper_{i}(x):\n    value = x + {i}\n    return value\n\n" for i in range(40)
)


@pytest.fixture
def engine(loaded_random_model) -> CompletionEngine:
    settings = CompletionSettings(
        max_new_tokens=8, max_prompt_tokens=256, window_margin_lines=3, mid_line="always"
    )
    return CompletionEngine(loaded_random_model, settings)


def cached_prompt_is_consistent(engine: CompletionEngine, uri: str = URI) -> bool:
    """The cache holds exactly a fresh tokenization of its prompt, FIM markers as tokens."""
    region = engine.active_region(uri)
    assert region is not None and region.cache is not None and region.prompt is not None
    left = engine.tokenizer.encode(region.prompt.left)
    right = engine.tokenizer.encode(region.prompt.right)
    return region.cache.token_ids == assemble(region.layout, engine._markers, left, right)


def active_window(engine: CompletionEngine, uri: str = URI) -> ContextWindow:
    region = engine.active_region(uri)
    assert region is not None
    return engine.documents.snapshot(uri).windows[region.id]


def edit(engine: CompletionEngine, version: int, start: int, end: int, text: str) -> str:
    return engine.change_document(URI, version, [TextChange(start, end, text)])


def test_first_completion_encodes_then_typing_is_a_small_pie_edit(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    first = engine.complete(URI, cursor)
    assert first.source in ("model", "none") and first.tokens_generated > 0
    stats = engine.stats(URI)[URI]
    assert stats["last_edit_strategy"] == "full"
    assert 100 < stats["tokens_cached"] <= 256
    edit(engine, 2, cursor, cursor, "new")
    engine.complete(URI, cursor + 3)
    stats = engine.stats(URI)[URI]
    assert stats["last_edit_strategy"] == "pie"
    assert stats["last_edit"]["tokens_encoded"] <= 4
    assert stats["last_edit"]["tokens_reused"] > 100
    assert cached_prompt_is_consistent(engine)


def test_edits_above_and_below_the_cursor_sync_in_one_batch(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    text = SOURCE
    above = text.index("value = x + 18")
    text = edit(engine, 2, above, above + 5, "result")
    cursor += 1
    below = text.index("value = x + 22")
    text = edit(engine, 3, below, below, "# note\n    ")
    syncs = engine.stats(URI)[URI]["cache_syncs"]
    engine.complete(URI, cursor)
    stats = engine.stats(URI)[URI]
    assert stats["cache_syncs"] == syncs + 1
    assert stats["last_edit_strategy"] == "pie"
    assert stats["last_edit"]["tokens_encoded"] < 20
    assert cached_prompt_is_consistent(engine)
    assert "result = x + 18" in engine.active_region(URI).prompt.left
    assert "# note" in engine.active_region(URI).prompt.right


def test_a_sync_that_changes_nothing_keeps_the_last_edit(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    above = SOURCE.index("value = x + 18")
    edit(engine, 2, above, above, "# note\n    ")
    cursor += len("# note\n    ")
    engine.complete(URI, cursor)
    edited = engine.stats(URI)[URI]
    assert edited["last_edit_strategy"] == "pie" and edited["last_edit"]["tokens_moved"] > 0
    # The idle refresh syncs a cache that already holds today's text, then asks again.
    engine.prepare(URI, cursor)
    engine.complete(URI, cursor)
    after = engine.stats(URI)[URI]
    assert after["last_edit"] == edited["last_edit"]
    assert after["cache_syncs"] == edited["cache_syncs"]


@pytest.mark.parametrize("strategy", ["prefix", "full"])
def test_strategy_comes_from_settings(engine, strategy: str) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    engine.update_settings(
        CompletionSettings(strategy=strategy, max_prompt_tokens=256, mid_line="always")
    )
    edit(engine, 2, cursor, cursor, "x")
    engine.complete(URI, cursor + 1)
    assert engine.stats(URI)[URI]["last_edit_strategy"] == strategy
    assert cached_prompt_is_consistent(engine)


def test_nothing_generated_stays_in_the_cache(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    engine.complete(URI, 20)
    session = engine.active_region(URI)
    ids = session.cache.token_ids
    engine.complete(URI, 20)
    assert session.cache.token_ids == ids


def test_window_stays_put_while_typing(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    window = active_window(engine)
    assert window is not None and window.start > 0 and window.end < len(SOURCE)
    for version, char in enumerate("abcd", start=2):
        edit(engine, version, cursor, cursor, char)
        cursor += 1
        engine.complete(URI, cursor)
        moved = active_window(engine)
        assert (moved.start, moved.end) == (window.start, window.end + version - 1)
        assert engine.stats(URI)[URI]["last_edit"]["tokens_encoded"] <= 3


def test_moving_far_moves_the_window_and_keeps_the_budget(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    engine.complete(URI, SOURCE.index("helper_5("))
    first = active_window(engine)
    engine.complete(URI, SOURCE.index("helper_35("))
    second = active_window(engine)
    assert second.start > first.end
    assert len(engine.active_region(URI).cache) <= 256
    assert cached_prompt_is_consistent(engine)


def test_forward_typing_serves_the_rest_without_the_model(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    return width") + 4
    engine.complete(URI, cursor)
    engine.documents.set_forward_typing(URI, 1, ForwardTyping(cursor, "print(width)"))
    edit(engine, 2, cursor, cursor, "pr")
    edit(engine, 3, cursor + 2, cursor + 2, "i")
    served = engine.complete(URI, cursor + 3)
    assert (served.text, served.source) == ("nt(width)", "forward_typing")
    assert engine.stats(URI)[URI]["forward_typing_hits"] == 1
    edit(engine, 4, cursor + 2, cursor + 3, "")
    assert engine.complete(URI, cursor + 2).text == "int(width)"
    edit(engine, 5, cursor + 2, cursor + 2, "x")
    assert engine.complete(URI, cursor + 3).source != "forward_typing"


def test_memory_budget_evicts_least_recently_used(engine) -> None:
    uris = [f"file:///work/doc{i}.py" for i in range(3)]
    for uri in uris:
        engine.open_document(uri, SOURCE, 1, "python")
    engine.complete(uris[0], 10)
    one_cache = engine.stats(uris[0])[uris[0]]["cache_bytes"]
    engine.update_settings(
        CompletionSettings(
            max_new_tokens=8, max_prompt_tokens=256, memory_budget_bytes=2 * one_cache
        )
    )
    engine.complete(uris[1], 10)
    engine.complete(uris[2], 10)
    stats = engine.stats()
    assert stats[uris[0]]["evictions"] == 1 and stats[uris[0]]["tokens_cached"] == 0
    assert stats[uris[1]]["tokens_cached"] > 0 and stats[uris[2]]["tokens_cached"] > 0
    engine.complete(uris[0], 10)
    stats = engine.stats()
    assert stats[uris[0]]["last_edit_strategy"] == "full"
    assert stats[uris[1]]["evictions"] == 1


def test_close_frees_the_cache(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    engine.complete(URI, 10)
    cache = engine.active_region(URI).cache
    engine.close_document(URI)
    engine.release_closed()
    assert URI not in engine.stats()
    assert len(cache) == 0
    with pytest.raises(DocumentError, match="not open"):
        engine.complete(URI, 10)


def test_cancellation_stops_between_tokens(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    checks = 0

    def stop_after_three() -> bool:
        nonlocal checks
        checks += 1
        return checks > 3

    result = engine.complete(URI, 30, should_stop=stop_after_three)
    assert (result.text, result.reason) == ("", "cancelled")
    assert result.tokens_generated <= 2


def test_stale_version_gives_nothing(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    edit(engine, 2, 0, 0, "#")
    result = engine.complete(URI, 5, version=1)
    assert result.text == "" and "version 2" in result.reason


def test_bad_inputs_leave_state_unchanged(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    with pytest.raises(DocumentError, match=r"\[5, 999999\)"):
        engine.change_document(URI, 2, [TextChange(0, 0, "ok"), TextChange(5, 999999, "")])
    snapshot = engine.documents.snapshot(URI)
    assert (snapshot.text, snapshot.version) == (SOURCE, 1)
    with pytest.raises(DocumentError, match="cursor offset -1"):
        engine.complete(URI, -1)
    with pytest.raises(SettingsError, match="strategy 'fast'"):
        CompletionSettings(strategy="fast")  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="exceeds the model's 4096 positions"):
        engine.update_settings(CompletionSettings(max_prompt_tokens=4090, max_new_tokens=64))
    assert engine.settings.max_prompt_tokens == 256


def test_empty_document_and_odd_characters(engine) -> None:
    engine.open_document(URI, "", 1, "python")
    assert engine.complete(URI, 0).source in ("model", "none")
    text = "s = '😀\x00'\r\nt = 1\r\n"
    engine.open_document("file:///work/odd.py", text, 1, "python")
    result = engine.complete("file:///work/odd.py", text.index("t"))
    assert "\r" not in result.text


def test_changed_span() -> None:
    assert changed_span("abcdef", "abXYef") == (2, 4, 4)
    assert changed_span("aaa", "aaaa") == (3, 3, 4)
    assert changed_span("", "x") == (0, 0, 1)
    assert changed_span("same", "same") == (4, 4, 4)


def test_model_without_fim_tokens_gets_the_left_context(loaded_random_model) -> None:
    from dataclasses import replace

    plain = replace(loaded_random_model, fim=None)
    engine = CompletionEngine(plain, CompletionSettings(max_new_tokens=4, max_prompt_tokens=128))
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    session = engine.active_region(URI)
    assert session.prompt.right is None and SOURCE[:cursor].endswith(
        session.prompt.left + session.prompt.healed
    )
    assert session.cache.token_ids == engine.tokenizer.encode(session.prompt.left)
    assert len(session.cache) <= 128
    edit(engine, 2, cursor, cursor, "abc")
    engine.complete(URI, cursor + 3)
    stats = engine.stats(URI)[URI]
    assert stats["last_edit_strategy"] == "pie" and stats["last_edit"]["tokens_encoded"] <= 3
    assert session.cache.token_ids == engine.tokenizer.encode(session.prompt.left)
    next_line = SOURCE.index("\n", cursor) + 3 + 1
    engine.complete(URI, next_line)  # moving down in a plain prompt is an append
    stats = engine.stats(URI)[URI]
    assert stats["last_edit_strategy"] == "pie" and stats["last_edit"]["tokens_reused"] > 50


def test_mid_line_completions_only_before_closing_text(loaded_random_model) -> None:
    engine = CompletionEngine(loaded_random_model, CompletionSettings(max_new_tokens=4))
    text = "def f(values):\n    return max(values)\n    total = sum()\n"
    engine.open_document(URI, text, 1, "python")
    before_code = text.index("max(") + len("max(")
    result = engine.complete(URI, before_code)
    assert (result.text, result.reason) == ("", "code after the cursor on its line")
    assert engine.active_region(URI) is None  # nothing was encoded for it
    before_closer = text.index("sum(") + len("sum(")
    assert engine.complete(URI, before_closer).reason != "code after the cursor on its line"
    engine.update_settings(replace(engine.settings, mid_line="always"))
    assert engine.complete(URI, before_code).reason != "code after the cursor on its line"


def test_token_healing_backs_the_prompt_up_and_strips_what_it_recreates(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    val")
    completion = engine.complete(URI, cursor)
    region = engine.active_region(URI)
    # The shipped tokenizer splits indentation so that its last space starts the word.
    assert region.prompt.healed == " val"
    assert SOURCE[:cursor].endswith(region.prompt.left + " val")
    assert cached_prompt_is_consistent(engine)
    assert completion.tokens_generated > 0
    unhealed = CompletionEngine(engine.loaded, replace(engine.settings, heal_tokens=False))
    unhealed.open_document(URI, SOURCE, 1, "python")
    unhealed.complete(URI, cursor)
    assert unhealed.active_region(URI).prompt.healed == ""


def test_confidence_gate_and_token_cut(engine) -> None:
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = ")
    shown = engine.complete(URI, cursor)
    assert shown.text and shown.confidence is not None and 0 < shown.confidence <= 1
    engine.update_settings(replace(engine.settings, min_confidence=1.0))
    gated = engine.complete(URI, cursor)
    assert gated.text == "" and "minConfidence" in gated.reason
    assert engine.stats(URI)[URI]["below_confidence_gate"] == 1
    engine.update_settings(replace(engine.settings, min_confidence=0.0, min_token_prob=1.0))
    cut = engine.complete(URI, cursor)
    assert cut.text == "" and cut.reason == "low-confidence token"
    with pytest.raises(SettingsError, match="min_confidence"):
        engine.update_settings(replace(engine.settings, min_confidence=1.5))
    assert engine.settings.min_token_prob == 1.0


def test_confidence_settings_of_minus_one_take_the_models_calibration(engine) -> None:
    from cache_engine.completion.confidence import ConfidenceGate

    settings = replace(engine.settings, min_confidence=-1, min_token_prob=-1)
    engine.update_settings(settings)
    assert engine.confidence_gate() == ConfidenceGate(0.0, 0.0)  # the random model has none
    engine.model_gate = ConfidenceGate(1.0, 0.0)
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = ")
    assert engine.complete(URI, cursor).text == ""
    engine.update_settings(replace(settings, min_confidence=0.0))
    assert engine.complete(URI, cursor).text != ""


def test_healing_tokens_do_not_count_against_max_new_tokens(engine) -> None:
    # The model alone: mixed with the document, the first token is " value", which heals and
    # suggests at once, and its "ue" is the text already after the cursor, so nothing is shown.
    engine.update_settings(replace(engine.settings, max_new_tokens=1, document_ngram_weight=0))
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    val")
    completion = engine.complete(URI, cursor)
    assert engine.active_region(URI).prompt.healed == " val"
    # One token beyond the healed text, however many spelled it out again.
    assert completion.text or completion.reason in ("end of text", "stop rule")


def test_cuda_graphs_need_a_model_on_a_cuda_device(loaded_random_model) -> None:
    with pytest.raises(ValueError, match="CUDA device, not cpu"):
        CompletionEngine(loaded_random_model, cuda_graphs=True)


@pytest.mark.parametrize("compiled", [True, False])
def test_drafts_verified_in_the_compiled_pass_or_torch_give_the_plain_suggestion(
    loaded_random_model, monkeypatch, compiled: bool
) -> None:
    if not compiled:
        monkeypatch.setenv("PIE_LSP_COMPILED_STEP", "0")
    cursor = SOURCE.index("    return value") + len("    return value")
    suggestions, drafted = [], []
    for speculative_tokens in (4, 0):
        settings = CompletionSettings(
            max_new_tokens=24, max_prompt_tokens=256, speculative_tokens=speculative_tokens
        )
        engine = CompletionEngine(loaded_random_model, settings)
        engine.open_document(URI, SOURCE, 1, "python")
        completion = engine.complete(URI, cursor)
        suggestions.append((completion.text, completion.reason, completion.tokens_generated))
        region = engine.active_region(URI)
        assert region is not None and region.cache is not None
        step = region.cache._lean_step
        assert step is not None and (step.compiled_step_off is None) is compiled
        drafted.append(engine.stats(URI)[URI]["speculative_drafted_total"])
    assert drafted[0] > 0 and drafted[1] == 0
    assert suggestions[0] == suggestions[1]


def test_after_a_far_edit_the_earlier_completion_there_is_the_draft(loaded_random_model) -> None:
    cursor = SOURCE.index("    return value", SOURCE.index("helper_30")) + len("    return value")
    far = SOURCE.index("def helper_2(")
    comment = "# a note typed far above\n"
    results = []
    for speculative_tokens in (8, 0):
        settings = CompletionSettings(
            max_new_tokens=24, max_prompt_tokens=1024, speculative_tokens=speculative_tokens
        )
        engine = CompletionEngine(loaded_random_model, settings)
        engine.open_document(URI, SOURCE, 1, "python")
        first = engine.complete(URI, cursor)
        before = engine.stats(URI)[URI]
        engine.change_document(URI, 2, [TextChange(far, far, comment)])
        again = engine.complete(URI, cursor + len(comment))
        stats = engine.stats(URI)[URI]
        results.append((first.text, again.text, again.tokens_generated))
        assert stats["last_edit"]["tokens_moved"] > 0  # the far edit is inside the prompt
        if speculative_tokens:
            assert stats["recalled_drafts"] == 1
            drafted = stats["speculative_drafted_total"] - before["speculative_drafted_total"]
            accepted = stats["speculative_accepted_total"] - before["speculative_accepted_total"]
            # Kept whole where the edit leaves the random model's output as it was.
            assert drafted >= accepted > 0
        else:
            assert stats["recalled_drafts"] == stats["speculative_drafted_total"] == 0
    assert results[0] == results[1]


@pytest.mark.parametrize("layout", ["psm", "spm"])
def test_the_document_s_ngrams_steer_the_suggestion_in_either_fim_layout(
    loaded_random_model, layout: str
) -> None:
    # Forty functions of one pattern, and the cursor on the line after the next one's header:
    # random weights alone do not write the pattern's next line; mixed with what followed
    # the same tokens before, they do, which needs the text at the cursor found inside the
    # FIM prompt (the suffix follows it in psm, the middle marker in spm).
    before = SOURCE + "def helper_40(x):\n"
    text = before + "\n\ndef last():\n    return None\n"
    suggestions = {}
    for weight in (0.2, 0.0):
        settings = CompletionSettings(
            max_new_tokens=24,
            max_prompt_tokens=1024,
            fim_layout=layout,
            document_ngram_weight=weight,
            min_confidence=0,
            min_token_prob=0,
        )
        engine = CompletionEngine(loaded_random_model, settings)
        engine.open_document(URI, text, 1, "python")
        suggestions[weight] = engine.complete(URI, len(before)).text
        region = engine.active_region(URI)
        assert region is not None and region.right_tokens > 0
        chooser = engine.next_token_chooser(URI)
        assert (chooser is None) == (weight == 0)
        chosen = engine.stats(URI)[URI]["ngram_chosen_tokens"]
        assert chosen > 0 if weight else chosen == 0
    assert suggestions[0.2].startswith("    value = x + ")
    assert not suggestions[0.0].startswith("    value")


def test_healing_with_the_document_s_ngrams_completes_the_word_at_the_cursor(
    loaded_random_model,
) -> None:
    # The prompt is backed up over " val"; the allowed tokens re-create it, and the mixture,
    # choosing among them, takes the file's " value" and goes on with the pattern.
    text = SOURCE + "def helper_40(x):\n    val"
    settings = CompletionSettings(max_new_tokens=8, min_confidence=0, min_token_prob=0)
    engine = CompletionEngine(loaded_random_model, settings)
    engine.open_document(URI, text, 1, "python")
    completion = engine.complete(URI, len(text))
    assert engine.active_region(URI).prompt.healed == " val"
    assert completion.text.startswith("ue = x + ")

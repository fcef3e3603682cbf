"""Speculative decoding over the editable cache: the output equals plain greedy decoding."""

from __future__ import annotations

import random

import pytest

from cache_engine.completion.speculation import PromptLookup, RecalledDraft
from cache_engine.kv.editable_cache import EditableCache
from tests.model_factory import tiny_model


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


class Scripted:
    """A drafter that proposes a fixed continuation of the ids it saw first."""

    def __init__(self, continuation: list[int], prompt_length: int):
        self.continuation = continuation
        self.prompt_length = prompt_length
        self.accepted = 0

    def __call__(self, ids) -> list[int]:
        done = len(ids) - self.prompt_length
        return self.continuation[done : done + 5]

    def record(self, accepted: int, verified: int) -> None:
        assert 0 <= accepted <= verified
        self.accepted += accepted


def decode(model, prompt: list[int], steps: int, draft=None, **cache_options) -> list[int]:
    cache = EditableCache(model, strategy="pie", **cache_options)
    cache.reset(prompt)
    out = cache.generate(steps, lambda token, log_prob: True, draft=draft)
    assert cache.token_ids == prompt  # nothing generated stays
    return out


def repetitive_prompt(seed: int) -> list[int]:
    rng = random.Random(seed)
    phrase = [rng.randrange(4, 160) for _ in range(12)]
    return [token for _ in range(6) for token in phrase] + phrase[:5]


@pytest.mark.parametrize("seed", range(4))
def test_prompt_lookup_equals_greedy(llama, seed) -> None:
    prompt = repetitive_prompt(seed)
    plain = decode(llama, prompt, 40)
    lookup = PromptLookup(draft_tokens=6)
    assert decode(llama, prompt, 40, draft=lookup) == plain
    assert lookup.drafted > 0


def test_a_perfect_draft_is_all_accepted_and_a_wrong_one_changes_nothing(llama) -> None:
    prompt = repetitive_prompt(7)
    plain = decode(llama, prompt, 30)
    perfect = Scripted(plain, len(prompt))
    assert decode(llama, prompt, 30, draft=perfect) == plain
    assert perfect.accepted >= 20  # about five drafted tokens kept per pass
    wrong = Scripted([(t + 1) % 160 for t in plain], len(prompt))
    assert decode(llama, prompt, 30, draft=wrong) == plain
    assert wrong.accepted == 0


def test_stopping_inside_an_accepted_draft(llama) -> None:
    prompt = repetitive_prompt(3)
    plain = decode(llama, prompt, 30)
    cache = EditableCache(llama, strategy="pie")
    cache.reset(prompt)
    seen: list[int] = []

    def stop_at_seven(token: int, log_prob: float) -> bool:
        seen.append(token)
        return len(seen) < 7

    out = cache.generate(30, stop_at_seven, draft=Scripted(plain, len(prompt)))
    assert out == plain[:7] == seen


def test_speculation_respects_capacity_and_growth(llama) -> None:
    prompt = repetitive_prompt(5)
    plain = decode(llama, prompt, 50, initial_capacity=16)
    draft = PromptLookup(draft_tokens=8)
    assert decode(llama, prompt, 50, draft=draft, initial_capacity=16) == plain
    bounded = decode(llama, prompt, 50, max_capacity=len(prompt) + 10)
    assert len(bounded) == 11
    draft = PromptLookup(draft_tokens=8)
    assert decode(llama, prompt, 50, draft=draft, max_capacity=len(prompt) + 10) == bounded


def decode_counting_passes(model, prompt: list[int], steps: int, draft) -> tuple[list[int], list]:
    """(the output, the rows of each decoding pass), every pass through the torch forward."""
    cache = EditableCache(model, strategy="pie")
    cache.reset(prompt)
    passes = []
    forward = cache._forward

    def counted(ids, *args, **kwargs):
        passes.append(len(ids))
        return forward(ids, *args, **kwargs)

    cache._forward = counted
    cache._bound_pass = lambda: None
    return cache.generate(steps, lambda token, log_prob: True, draft=draft), passes


def test_a_recalled_continuation_is_kept_in_growing_passes(llama) -> None:
    prompt = repetitive_prompt(11)
    plain = decode(llama, prompt, 20)
    recalled = RecalledDraft(plain, len(prompt), PromptLookup(draft_tokens=6), first_draft=5)
    out, passes = decode_counting_passes(llama, prompt, 20, recalled)
    assert out == plain
    # The prompt's logits give the first token. Each pass is the step's own token and a draft
    # of 5, then 10, then the 2 left before the limit of 20; each gives one more token.
    assert passes == [1 + 5, 1 + 10, 1 + 2]
    assert (recalled.drafted, recalled.accepted, recalled.recalled_tokens) == (17, 17, 17)


@pytest.mark.parametrize("changed_at", [2, 12])
def test_a_recall_that_stops_holding_wastes_one_pass(llama, changed_at: int) -> None:
    prompt = repetitive_prompt(12)
    plain = decode(llama, prompt, 30)
    changed = [*plain[:changed_at], (plain[changed_at] + 1) % 160, *plain[changed_at + 1 :]]
    recalled = RecalledDraft(changed, len(prompt), first_draft=3)
    out, passes = decode_counting_passes(llama, prompt, 30, recalled)
    assert out == plain
    if changed_at == 2:
        # The first draft (tokens 1-3) is rejected at token 2; one-token steps follow.
        assert passes == [1 + 3] + [1] * (30 - 3)
        assert recalled.accepted == 1
    else:
        # Drafts of 3 (tokens 1-3) and 6 (5-10) are kept; the draft of 12 from token 12 on is
        # rejected at its first token.
        assert passes == [1 + 3, 1 + 6, 1 + 12] + [1] * (30 - 13)
        assert recalled.accepted == 9
    assert recalled.recalled_tokens == recalled.drafted


def test_after_a_recall_stops_holding_the_lookup_drafts(llama) -> None:
    prompt = repetitive_prompt(12)
    plain = decode(llama, prompt, 30)
    changed = [*plain[:2], (plain[2] + 1) % 160, *plain[3:]]
    lookup = PromptLookup(draft_tokens=6)
    recalled = RecalledDraft(changed, len(prompt), lookup, first_draft=3)
    assert decode(llama, prompt, 30, draft=recalled) == plain
    assert lookup.drafted > 0 and recalled.drafted == recalled.recalled_tokens + lookup.drafted
    assert RecalledDraft((), len(prompt))(prompt + plain[:1]) == []


def test_a_long_recalled_draft_through_the_compiled_pass_equals_greedy(llama) -> None:
    prompt = repetitive_prompt(13)
    plain = decode(llama, prompt, 48)
    cache = EditableCache(llama, strategy="pie")
    cache.reset(prompt)
    if cache._bound_pass() is None:
        pytest.skip("no compiled pass for this model on this machine")
    for recalled in (plain, [*plain[:20], (plain[20] + 1) % 160, *plain[21:]]):
        draft = RecalledDraft(recalled, len(prompt), first_draft=16)
        assert cache.generate(48, lambda token, log_prob: True, draft=draft) == plain
        assert draft.recalled_tokens >= 31 if recalled is plain else draft.recalled_tokens > 0


def test_prompt_lookup_drafts_what_followed_the_latest_match() -> None:
    lookup = PromptLookup(draft_tokens=3, max_ngram=2, first_draft=3)
    assert lookup([1, 2, 3, 9, 1, 2, 4, 5, 1, 2]) == [4, 5, 1]
    assert lookup([7, 8, 9]) == []
    assert PromptLookup(draft_tokens=0)([1, 1, 1]) == []


def test_the_draft_length_follows_the_acceptance() -> None:
    ids = list(range(40)) + list(range(10))  # after 0..9 again, 10.. followed
    lookup = PromptLookup(draft_tokens=5)
    assert lookup(ids) == [10, 11]  # the first draft is first_draft long
    lookup.record(2, 2)  # kept whole: two more
    assert lookup(ids) == [10, 11, 12, 13]
    lookup.record(4, 4)
    assert lookup(ids) == [10, 11, 12, 13, 14]  # never past draft_tokens
    lookup.record(1, 5)  # a rejection: one fewer
    assert lookup.draft_length == 4
    lookup(ids)
    lookup.record(3, 3)  # the pass checked only 3 (the generation's limit): kept whole
    assert lookup.draft_length == 5
    for _ in range(6):
        lookup.record(0, len(lookup(ids)))
    assert lookup.draft_length == 1  # never below one
    assert lookup([7, 8, 9]) == []
    assert lookup.draft_length == 1
    assert (lookup.drafted, lookup.accepted) == (2 + 4 + 5 + 4 + 5 + 4 + 3 + 2 + 1 + 1, 10)
    assert PromptLookup(draft_tokens=1).draft_length == 1
    fixed = PromptLookup(draft_tokens=5, adaptive=False)
    assert fixed(ids) == [10, 11, 12, 13, 14]
    fixed.record(0, 5)
    assert fixed(ids) == [10, 11, 12, 13, 14]


def latest_follow(ids: list[int], length: int, max_ngram: int, min_ngram: int) -> list[int]:
    """What PromptLookup should draft, by a plain scan from the end."""
    for size in range(min(max_ngram, len(ids)), min_ngram - 1, -1):
        tail = ids[len(ids) - size :]
        for end in range(len(ids) - 1, size - 1, -1):
            if ids[end - size : end] == tail:
                return ids[end : end + length]
    return []


@pytest.mark.parametrize("vocab", [3, 20, 200_000])
def test_prompt_lookup_drafts_what_a_scan_finds_as_ids_grow(vocab: int) -> None:
    rng = random.Random(vocab)
    for _ in range(40):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(0, 200))]
        lookup = PromptLookup(draft_tokens=6, adaptive=False)
        for _ in range(15):  # the prompt is indexed in numpy, later ids in a dictionary
            assert lookup(ids) == latest_follow(ids, 6, lookup.max_ngram, lookup.min_ngram)
            ids = ids + [rng.randrange(vocab) for _ in range(rng.randrange(1, 4))]

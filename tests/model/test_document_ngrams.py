"""The model's choice mixed with the document's n-grams (a cache language model)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from cache_engine.completion.settings import CompletionSettings, SettingsError
from cache_engine.completion.speculation import PromptLookup
from cache_engine.kv.editable_cache import EditableCache
from cache_engine.model.document_ngrams import DEFAULT_WEIGHT, DocumentNgramMixture
from tests.model_factory import tiny_model

VOCAB = 50


def logits_preferring(best: int, second: int, margin: float = 1.0) -> torch.Tensor:
    row = torch.zeros(VOCAB)
    row[best] = 5.0
    row[second] = 5.0 - margin
    return row


def test_each_matching_length_gets_its_weight_and_the_longest_the_most() -> None:
    mixture = DocumentNgramMixture(weight=0.2)
    #      0  1  2  3  4  5  6  7  8  9
    ids = [7, 1, 2, 3, 9, 1, 2, 3, 4, 2, 3]
    # "2 3" occurred at 1..3 (then 9) and 5..7 (then 4); "1 2 3" is not the tail; so one length.
    assert mixture.ngram_mass(ids) == [(0.2, {9: 0.5, 4: 0.5})]
    ids = [7, 1, 2, 3, 9, 1, 2, 3, 4, 1, 2, 3]
    # Length 3 ("1 2 3") mixed last keeps 0.2; length 2 ("2 3") keeps 0.2 · 0.8.
    mass = mixture.ngram_mass(ids)
    assert mass == [(0.2, {9: 0.5, 4: 0.5}), (pytest.approx(0.16), {9: 0.5, 4: 0.5})]
    model_share = 0.8 ** len(mass)
    assert model_share + sum(weight for weight, _ in mass) == pytest.approx(1.0)


def test_in_a_fim_prompt_the_text_at_the_cursor_is_matched_and_markers_never_follow() -> None:
    prefix_marker, suffix_marker, middle_marker = 90, 91, 92
    #        PRE  left part ----------  SUF  right  MID
    prompt = [90, 1, 2, 3, 7, 1, 2, 91, 2, 3, 92]
    markers = (prefix_marker, suffix_marker, middle_marker)
    mixture = DocumentNgramMixture(weight=0.2, left_end=7, never_follow=markers)
    # "1 2" ends the left part; it occurred once before, followed by 3 (its own end in the
    # prompt is followed by the suffix marker, which no match may propose).
    assert mixture.ngram_mass(prompt) == [(0.2, {3: 1.0})]
    # A generated 3 continues the left part: "1 2 3" and "2 3" match where the left part
    # had them (in the right part, "2 3" is followed by the middle marker).
    assert mixture.ngram_mass([*prompt, 3]) == [(0.2, {7: 1.0}), (pytest.approx(0.16), {7: 1.0})]
    # Read as a left-to-right prompt, the tail is the middle marker: nothing matches.
    assert DocumentNgramMixture(weight=0.2).ngram_mass(prompt) == []
    refused = DocumentNgramMixture(left_end=12)
    with pytest.raises(ValueError, match="left_end 12 is outside the prompt of 11 ids"):
        refused.ngram_mass(prompt)
    # The refused prompt was not kept: asked again, it is refused again.
    with pytest.raises(ValueError, match="left_end 12 is outside the prompt of 11 ids"):
        refused.ngram_mass(prompt)


@pytest.mark.parametrize("left_end", [None, 30])
def test_one_mixture_over_a_generation_answers_as_a_fresh_one_for_each_sequence(
    left_end: int | None,
) -> None:
    """The searched ids are kept between calls and changed only where the generated tail
    differs: growing, losing a verify pass's rejected end, growing past the kept array, and a
    new prompt. A fresh mixture sees the prompt first, as in a generation."""
    rng = random.Random(3)
    prompt = [rng.randrange(6) for _ in range(40)]
    kept = DocumentNgramMixture(weight=0.3, left_end=left_end)
    kept.ngram_mass(prompt)
    tail: list[int] = []
    sequences = []
    for _ in range(300):
        if tail and rng.random() < 0.2:
            del tail[len(tail) - rng.randrange(1, min(len(tail), 6) + 1) :]
        else:
            tail.extend(rng.randrange(6) for _ in range(rng.randrange(1, 4)))
        sequences.append((prompt, prompt + tail))
    other = [5, 4, *prompt[2:]]
    sequences += [(prompt, prompt), (other, other), (other, [*other, 1, 2]), (other, other[:35])]
    for sequence_prompt, ids in sequences:
        fresh = DocumentNgramMixture(weight=0.3, left_end=left_end)
        fresh.ngram_mass(sequence_prompt)
        assert kept.ngram_mass(ids) == fresh.ngram_mass(ids)
        assert kept.ngram_mass(tuple(ids)) == fresh.ngram_mass(ids)


def test_no_earlier_match_leaves_the_model_alone() -> None:
    mixture = DocumentNgramMixture()
    ids = [1, 2, 3, 4, 5, 1]
    assert mixture.ngram_mass(ids) == []
    row = logits_preferring(best=8, second=2)
    token, log_prob = mixture(row, ids, None)
    assert token == 8
    assert log_prob == pytest.approx(float(torch.log_softmax(row, -1)[8]))
    assert mixture.overruled == 0


def test_a_repeated_continuation_overrules_a_close_second_but_not_a_sure_model() -> None:
    ids = [5, 6, 7, 2, 11, 5, 6, 7]
    close = logits_preferring(best=8, second=2, margin=0.5)
    mixture = DocumentNgramMixture(weight=0.2)
    token, log_prob = mixture(close, ids, None)
    assert token == 2
    probabilities = torch.softmax(close, -1)
    # Lengths 2 and 3 match, both followed by 2: the model keeps 0.64 of the mass.
    assert math.exp(log_prob) == pytest.approx(0.64 * float(probabilities[2]) + 0.36)
    assert mixture.overruled == 1
    sure = torch.full((VOCAB,), -10.0)
    sure[8] = 10.0
    assert DocumentNgramMixture(weight=0.2)(sure, ids, None)[0] == 8
    assert DocumentNgramMixture(weight=0.0)(close, ids, None)[0] == 8


def test_only_allowed_tokens_are_chosen() -> None:
    ids = [5, 6, 7, 2, 11, 5, 6, 7]
    row = logits_preferring(best=8, second=2, margin=0.5)
    token, _ = DocumentNgramMixture()(row, ids, torch.tensor([8, 30]))
    assert token == 8
    token, _ = DocumentNgramMixture()(row, ids, torch.tensor([30, 31]))
    assert token in (30, 31)
    with pytest.raises(ValueError, match="allows no token"):
        DocumentNgramMixture()(row, ids, torch.tensor([], dtype=torch.long))


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match=r"in \[0, 1\), got 1\.5"):
        DocumentNgramMixture(weight=1.5)
    with pytest.raises(ValueError, match=r"got 1\.0"):
        DocumentNgramMixture(weight=1.0)
    with pytest.raises(SettingsError, match=r"document_ngram_weight .*got -0\.1"):
        CompletionSettings(document_ngram_weight=-0.1)
    assert CompletionSettings().document_ngram_weight == DEFAULT_WEIGHT


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def mixed_decode(model, prompt: list[int], steps: int, draft=None) -> tuple[list[int], list]:
    cache = EditableCache(model, strategy="pie")
    cache.reset(prompt)
    seen: list[tuple[int, float]] = []
    mixture = DocumentNgramMixture(weight=0.3)

    def on_token(token: int, log_prob: float) -> bool:
        seen.append((token, log_prob))
        return True

    out = cache.generate(steps, on_token, draft=draft, choose=mixture)
    assert cache.token_ids == prompt
    return out, seen


@pytest.mark.parametrize("seed", range(3))
def test_drafts_verified_against_the_mixture_change_nothing(llama, seed: int) -> None:
    rng = random.Random(seed)
    phrase = [rng.randrange(4, 160) for _ in range(10)]
    prompt = [token for _ in range(4) for token in phrase] + phrase[:4]
    plain, plain_seen = mixed_decode(llama, prompt, 30)
    drafted, drafted_seen = mixed_decode(llama, prompt, 30, draft=PromptLookup(draft_tokens=6))
    assert drafted == plain
    assert [t for t, _ in drafted_seen] == [t for t, _ in plain_seen]
    for (_, a), (_, b) in zip(drafted_seen, plain_seen, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    # The mixture follows the phrase the prompt repeats, which random weights alone do not.
    model_alone = EditableCache(llama, strategy="pie")
    model_alone.reset(prompt)
    alone = model_alone.generate(30, lambda token, log_prob: True)
    expected = (phrase * 4)[4:34]
    assert sum(a == b for a, b in zip(plain, expected)) > sum(
        a == b for a, b in zip(alone, expected)
    )
    # Drafts of what the model alone would write: the mixture turns some of them down, and
    # the output is still the mixture's.
    doubter = AloneDraft(alone, len(prompt))
    assert mixed_decode(llama, prompt, 30, draft=doubter)[0] == plain
    assert doubter.accepted < doubter.verified


class AloneDraft:
    """Drafts the model alone's greedy continuation from where the generation has got to."""

    def __init__(self, alone: list[int], prompt_length: int):
        self.alone = alone
        self.prompt_length = prompt_length
        self.accepted = self.verified = 0

    def __call__(self, ids) -> list[int]:
        done = len(ids) - self.prompt_length
        return self.alone[done : done + 4]

    def record(self, accepted: int, verified: int) -> None:
        self.accepted += accepted
        self.verified += verified

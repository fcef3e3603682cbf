"""The edit-accuracy benchmark's quick run: prefix is exact, PIE beats the conflict baseline."""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import pytest
import torch

from benchmarks.edit_accuracy import parse_args, run, write_outputs
from tests.conftest import DEFAULT_MODEL_DIR

HAS_DEFAULT_MODEL = (DEFAULT_MODEL_DIR / "model.safetensors").exists()


@pytest.fixture(scope="module")
def quick_results(request) -> Iterator[dict]:
    _, settings = parse_args(["--quick"])
    if HAS_DEFAULT_MODEL:
        from cache_engine.model.loading import load_model

        loaded = load_model("default")
    else:
        # Random weights still exercise every strategy and the text-to-token pipeline.
        loaded = request.getfixturevalue("loaded_random_model")
    # One thread, as the benchmark's command line uses: on a busy machine two OpenMP threads
    # spin-wait on each other and the run takes ten times longer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = run(loaded, settings, progress=False)
    finally:
        torch.set_num_threads(threads)
    yield results


def test_quick_run_measures_every_kind(quick_results: dict) -> None:
    kinds = {r["kind"] for r in quick_results["records"] if r["strategies"]}
    assert kinds == {"insertion", "deletion", "multi"}
    assert not quick_results["unbuilt"]


def test_post_edit_ids_equal_fresh_tokenization(quick_results: dict) -> None:
    records = quick_results["records"]
    assert all(r["ids_match_fresh"] for r in records)
    assert all(row["cache_ids_match"] for r in records for row in r["strategies"].values())
    assert quick_results["summary"]["id_mismatches"] == 0


def test_token_counts_add_up(quick_results: dict) -> None:
    for record in quick_results["records"]:
        for name, row in record["strategies"].items():
            # The FLOP count's tokens are the edit's own plus, at most, the re-fed last token.
            assert row["tokens_encoded"] - row["tokens_encoded_by_edit"] in (0, 1), name
            assert row["tokens_encoded_by_edit"] + row["tokens_reused"] == record["context_tokens"]


def test_prefix_equals_full(quick_results: dict) -> None:
    for record in quick_results["records"]:
        full, prefix = record["strategies"]["full"], record["strategies"]["prefix"]
        where = f"{record['kind']} k={record['k']} {record['place']} {record['source']}"
        assert prefix["predicted"] == full["predicted"], where
        assert prefix["max_logit_diff"] <= 1e-4, where


@pytest.mark.skipif(
    not HAS_DEFAULT_MODEL,
    reason="needs the trained default model (cache_engine/default_model/model.safetensors): "
    "random weights attend almost uniformly, so positions barely move their logits",
)
def test_conflict_is_worse_than_pie_on_insertion(quick_results: dict) -> None:
    insertions = [r for r in quick_results["records"] if r["kind"] == "insertion"]
    assert insertions
    pie = statistics.fmean(r["strategies"]["pie"]["kl_from_full"] for r in insertions)
    conflict = statistics.fmean(r["strategies"]["conflict"]["kl_from_full"] for r in insertions)
    assert conflict > 2 * pie, (pie, conflict)


def test_outputs_are_written(quick_results: dict, tmp_path) -> None:
    written = write_outputs(quick_results, tmp_path, plots=False)
    assert {p.name for p in written} == {"edit_accuracy.json", "edit_accuracy.md"}
    assert "| insertion | pie |" in (tmp_path / "edit_accuracy.md").read_text()

"""Weight snapshots of a training run and the export of their mean."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from cache_engine.model.loading import DEFAULT_MODEL_DIR
from cache_engine.model.training import export
from cache_engine.model.weight_averaging import (
    chosen_snapshots,
    latest_snapshots,
    load_average,
    save_snapshot,
    snapshots,
)
from tests.model_factory import tiny_model


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_the_average_is_the_mean_of_each_weight_and_keeps_ties(tmp_path: Path) -> None:
    first = tiny_model("llama", seed=1, tie_word_embeddings=True)
    second = tiny_model("llama", seed=2, tie_word_embeddings=True)
    save_snapshot(first, tmp_path, 100)
    save_snapshot(second, tmp_path, 200)
    model = tiny_model("llama", seed=3, tie_word_embeddings=True)
    load_average(model, [path for _, path in snapshots(tmp_path)])
    a, b = first.state_dict(), second.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, (a[name] + b[name]) / 2, rtol=0, atol=1e-7)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_snapshots_are_ordered_by_step_not_by_name(tmp_path: Path) -> None:
    model = tiny_model("llama")
    for step in (900, 1000, 50):
        save_snapshot(model, tmp_path, step)
    (tmp_path / "weights-notes.safetensors").write_text("not a snapshot")
    assert [step for step, _ in snapshots(tmp_path)] == [50, 900, 1000]
    assert [step for step, _ in latest_snapshots(tmp_path, 2)] == [900, 1000]


def test_asking_for_more_snapshots_than_there_are_names_both(tmp_path: Path) -> None:
    save_snapshot(tiny_model("llama"), tmp_path, 250)
    with pytest.raises(ValueError, match=r"last 3 snapshots.*holds 1 \(steps: 250\)"):
        latest_snapshots(tmp_path, 3)
    with pytest.raises(ValueError, match="not 0"):
        latest_snapshots(tmp_path, 0)


def test_chosen_steps_are_found_in_order_and_a_missing_one_is_named(tmp_path: Path) -> None:
    model = tiny_model("llama")
    for step in (250, 500, 750):
        save_snapshot(model, tmp_path, step)
    assert [step for step, _ in chosen_snapshots(tmp_path, [750, 250])] == [250, 750]
    with pytest.raises(
        ValueError, match=r"no snapshot at step 300, 900 .*holds steps: 250, 500, 750"
    ):
        chosen_snapshots(tmp_path, [250, 900, 300])
    with pytest.raises(ValueError, match="at least one"):
        chosen_snapshots(tmp_path, [])
    with pytest.raises(ValueError, match="step 500 asked more than once"):
        chosen_snapshots(tmp_path, [500, 750, 500])


def test_a_snapshot_of_another_shape_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    save_snapshot(tiny_model("llama", seed=1), tmp_path, 1)
    save_snapshot(tiny_model("llama", seed=2, hidden_size=32), tmp_path, 2)
    model = tiny_model("llama", seed=3)
    before = _weights(model)
    with pytest.raises(RuntimeError):
        load_average(model, [path for _, path in snapshots(tmp_path)])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_export_writes_the_mean_and_says_which_steps(tmp_path: Path) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(DEFAULT_MODEL_DIR)
    runs = tmp_path / "run"
    runs.mkdir()
    overrides = {"vocab_size": len(tokenizer), "tie_word_embeddings": True}
    snapshots_taken = [tiny_model("llama", seed=s, **overrides) for s in (1, 2, 3)]
    for step, model in zip((250, 500, 750), snapshots_taken, strict=True):
        save_snapshot(model, runs, step)
    current = tiny_model("llama", seed=4, **overrides)
    assert isinstance(current, LlamaForCausalLM)
    args = argparse.Namespace(
        output=tmp_path / "export",
        checkpoint_dir=runs,
        average_last=2,
        average_steps=None,
        init_from=None,
        continue_run=False,
        batch_size=8,
        seq_len=64,
        lr=1e-3,
        seed=0,
    )
    log = [{"step": 500, "train_loss": 2.0}, {"step": 760, "train_loss": 1.9}]
    export(current, tokenizer, log, args, step=760, train_minutes=None)
    written = load_file(str(args.output / "model.safetensors"))
    second, third = snapshots_taken[1].state_dict(), snapshots_taken[2].state_dict()
    for name, tensor in written.items():
        torch.testing.assert_close(tensor, (second[name] + third[name]) / 2, rtol=0, atol=1e-7)
    summary = json.loads((args.output / "training_log.json").read_text())
    assert summary["averaged_snapshot_steps"] == [500, 750]
    # The exported weights are those of step 750 at the newest: the log stops there too.
    assert summary["steps"] == 750
    assert [entry["step"] for entry in summary["log"]] == [500]

    args.average_last, args.average_steps = 1, [250, 750]
    export(current, tokenizer, log, args, step=760, train_minutes=None)
    written = load_file(str(args.output / "model.safetensors"))
    first = snapshots_taken[0].state_dict()
    for name, tensor in written.items():
        torch.testing.assert_close(tensor, (first[name] + third[name]) / 2, rtol=0, atol=1e-7)
    summary = json.loads((args.output / "training_log.json").read_text())
    assert summary["averaged_snapshot_steps"] == [250, 750]
    assert summary["steps"] == 750
    assert [entry["step"] for entry in summary["log"]] == [500]


def test_the_model_card_says_the_weights_are_a_mean() -> None:
    from cache_engine.model.evaluation import _stages

    training = {"steps": 2350, "batch_size": 8, "seq_len": 2048, "tokens_seen": 38_502_400}
    assert "mean" not in _stages(training)
    averaged = _stages({**training, "averaged_snapshot_steps": [2050, 2300]})
    assert averaged.startswith("2350 steps of 8×2048 tokens")
    assert "exported as the mean of its weights at steps 2050, 2300" in averaged

"""`python -m cache_engine.model.evaluation`: where its results go, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cache_engine.model import evaluation
from cache_engine.model.cpu_threading import DEFAULT_MODEL_DIR
from cache_engine.model.loading import ModelLoadError, model_folder


def test_model_folder_maps_default_and_expands_home(tmp_path, monkeypatch) -> None:
    assert model_folder("default") == DEFAULT_MODEL_DIR
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "candidate").mkdir()
    assert model_folder("~/candidate") == tmp_path / "candidate"


def test_model_folder_refuses_a_missing_folder(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="nowhere"):
        model_folder(str(tmp_path / "nowhere"))


def _fake_result(args) -> dict:
    return {"model": args.model, "samples": [], "next_line_examples": []}


def test_evaluating_another_model_writes_beside_it_not_over_the_shipped_one(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(evaluation, "evaluate", _fake_result)
    shipped = (DEFAULT_MODEL_DIR / "evaluation.json").read_bytes()
    evaluation.main(["--no-card", "--model", str(tmp_path)])
    assert json.loads((tmp_path / "evaluation.json").read_text())["model"] == str(tmp_path)
    assert (DEFAULT_MODEL_DIR / "evaluation.json").read_bytes() == shipped


def test_a_missing_model_folder_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(evaluation, "evaluate", _fake_result)
    missing = tmp_path / "typo"
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main(["--no-card", "--model", str(missing)])
    assert exit_info.value.code == 2
    assert str(missing) in capsys.readouterr().err
    assert not missing.exists()


def test_an_explicit_output_is_kept(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(evaluation, "evaluate", _fake_result)
    output: Path = tmp_path / "elsewhere.json"
    evaluation.main(["--no-card", "--model", str(tmp_path), "--output", str(output)])
    assert output.exists() and not (tmp_path / "evaluation.json").exists()

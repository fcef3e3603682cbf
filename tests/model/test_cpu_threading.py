"""The OpenMP wait policy the server picks from the model's size before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cache_engine.model.cpu_threading import (
    STREAMED_WEIGHT_BYTES,
    choose_openmp_wait_policy,
    weight_bytes_on_disk,
)
from tests.conftest import REPO


def large_model_folder(folder: Path) -> Path:
    (folder / "config.json").write_text("{}")
    with open(folder / "model.safetensors", "wb") as weights:
        weights.truncate(STREAMED_WEIGHT_BYTES + 1)  # sparse: no disk is written
    return folder


def test_streamed_weights_make_the_workers_sleep(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    folder = large_model_folder(tmp_path)
    assert weight_bytes_on_disk(str(folder)) == STREAMED_WEIGHT_BYTES + 1
    assert choose_openmp_wait_policy(str(folder), "cuda") is None
    assert "OMP_WAIT_POLICY" not in os.environ
    assert choose_openmp_wait_policy(str(folder), "cpu") == "PASSIVE"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "4"


def test_cached_weights_and_a_users_policy_are_left_alone(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert 0 < weight_bytes_on_disk("default") < STREAMED_WEIGHT_BYTES
    assert choose_openmp_wait_policy("default", "cpu") is None
    assert choose_openmp_wait_policy("Qwen/not-a-local-folder", "cpu") is None
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert choose_openmp_wait_policy(str(large_model_folder(tmp_path)), "cpu") is None
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize("module", ["lsp_server.__main__", "cache_engine.model.cpu_threading"])
def test_the_policy_is_chosen_before_torch_loads(module: str) -> None:
    # numpy loads OpenBLAS, which reads OPENBLAS_THREAD_TIMEOUT then.
    check = f"import sys, {module}; sys.exit('torch' in sys.modules or 'numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], cwd=REPO).returncode == 0

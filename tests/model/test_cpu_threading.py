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


@pytest.fixture
def unset(monkeypatch):
    for name in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_streamed_weights_make_the_workers_sleep(tmp_path, unset) -> None:
    folder = large_model_folder(tmp_path)
    assert weight_bytes_on_disk(str(folder)) == STREAMED_WEIGHT_BYTES + 1
    assert choose_openmp_wait_policy(str(folder), "cuda") == {}
    assert "OMP_WAIT_POLICY" not in os.environ
    chosen = choose_openmp_wait_policy(str(folder), "cpu")
    assert chosen == {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert "GOMP_SPINCOUNT" not in os.environ


def test_cached_weights_spin_briefly(unset) -> None:
    assert 0 < weight_bytes_on_disk("default") < STREAMED_WEIGHT_BYTES
    assert choose_openmp_wait_policy("default", "cpu") == {"GOMP_SPINCOUNT": "10000"}
    assert os.environ["GOMP_SPINCOUNT"] == "10000"
    assert "OMP_WAIT_POLICY" not in os.environ


def test_a_users_settings_and_unknown_models_are_left_alone(tmp_path, unset) -> None:
    assert choose_openmp_wait_policy("Qwen/not-a-local-folder", "cpu") == {}
    unset.setenv("GOMP_SPINCOUNT", "500")
    assert choose_openmp_wait_policy("default", "cpu") == {}
    assert os.environ["GOMP_SPINCOUNT"] == "500"
    unset.setenv("OPENBLAS_THREAD_TIMEOUT", "2")
    chosen = choose_openmp_wait_policy(str(large_model_folder(tmp_path)), "cpu")
    assert chosen == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "2"
    unset.setenv("OMP_WAIT_POLICY", "ACTIVE")
    unset.delenv("GOMP_SPINCOUNT")
    assert choose_openmp_wait_policy("default", "cpu") == {}
    assert choose_openmp_wait_policy(str(large_model_folder(tmp_path)), "cpu") == {}
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "GOMP_SPINCOUNT" not in os.environ


@pytest.mark.parametrize("module", ["lsp_server.__main__", "cache_engine.model.cpu_threading"])
def test_the_policy_is_chosen_before_torch_loads(module: str) -> None:
    # numpy loads OpenBLAS, which reads OPENBLAS_THREAD_TIMEOUT then.
    check = f"import sys, {module}; sys.exit('torch' in sys.modules or 'numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], cwd=REPO).returncode == 0

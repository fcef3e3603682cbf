"""Loading: each error a user can hit names the bad value and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

from cache_engine.model.loading import DEFAULT_MODEL_DIR, ModelLoadError, load_model
from tests.model_factory import tiny_model


def save_with_tokenizer(model, folder: Path, *, safe: bool = True) -> Path:
    model.save_pretrained(folder)
    if not safe:
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(DEFAULT_MODEL_DIR)
    tokenizer.save_pretrained(folder)
    return folder


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="does not exist") as error:
        load_model(str(missing))
    assert str(missing) in str(error.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_not_a_causal_lm(tmp_path):
    config = AutoConfig.for_model(
        "bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    AutoModel.from_config(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(str(tmp_path / "bert"))


def test_no_rope(tmp_path):
    folder = save_with_tokenizer(tiny_model("gpt2"), tmp_path / "gpt2")
    with pytest.raises(ModelLoadError, match="no rotary position embedding") as error:
        load_model(str(folder))
    assert "'gpt2'" in str(error.value)


def test_unsupported_rope_variant(tmp_path):
    model = tiny_model(
        "llama", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    )
    folder = save_with_tokenizer(model, tmp_path / "dynamic")
    with pytest.raises(ModelLoadError, match="rope_type 'dynamic'"):
        load_model(str(folder))


def test_pickle_needs_opt_in(tmp_path):
    folder = save_with_tokenizer(tiny_model("llama"), tmp_path / "pickled", safe=False)
    with pytest.raises(ModelLoadError, match="allow-pickle"):
        load_model(str(folder))
    loaded = load_model(str(folder), allow_pickle=True)
    assert loaded.model.config.model_type == "llama"


def test_hub_id_offline_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE") as error:
        load_model("deepseek-ai/deepseek-coder-1.3b-base")
    assert "deepseek-ai/deepseek-coder-1.3b-base" in str(error.value)


def test_bad_dtype_is_named(tmp_path):
    folder = save_with_tokenizer(tiny_model("llama"), tmp_path / "llama")
    with pytest.raises(ModelLoadError, match="'float8'"):
        load_model(str(folder), dtype="float8")


def test_local_folder_loads_with_fim(tmp_path):
    folder = save_with_tokenizer(tiny_model("qwen2"), tmp_path / "qwen2")
    loaded = load_model(str(folder), dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert loaded.fim is not None and loaded.fim.prefix == "<|fim_prefix|>"
    assert loaded.eos_token_ids

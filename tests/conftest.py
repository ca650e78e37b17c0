from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

from sparse_edit.testing import build_tiny_model

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """Factory with a session cache: tiny_models(model_type, **options) -> folder."""
    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("tiny-models")

    def make(model_type: str = "llama", **options) -> Path:
        key = (model_type, tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in cache:
            name = "-".join([model_type, *(f"{k}{v}" for k, v in key[1])]).replace("/", "_")
            cache[key] = build_tiny_model(root / name, model_type, **options)
        return cache[key]

    return make


@pytest.fixture
def llama_dir(tiny_models) -> Path:
    return tiny_models("llama")


@pytest.fixture
def sharded_dir(tiny_models) -> Path:
    return tiny_models("llama", max_shard_size="20KB", tied=True, dtype=torch.bfloat16)

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

from sparse_edit.testing import build_tiny_model
from tests.helpers import parallel_prompt_files, run_cli

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


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> tuple[Path, Path]:
    return parallel_prompt_files(tmp_path_factory.mktemp("prompts"), count=10)


@pytest.fixture(scope="module")
def located(tiny_models, prompts, tmp_path_factory):
    """model_type -> (model folder, artifact path), computed once per family."""
    cache: dict[tuple, tuple[Path, Path]] = {}
    root = tmp_path_factory.mktemp("artifacts")

    def make(model_type: str, **model_options) -> tuple[Path, Path]:
        key = (model_type, tuple(sorted((k, str(v)) for k, v in model_options.items())))
        if key not in cache:
            model = tiny_models(model_type, **model_options)
            artifact = root / f"{model.name}.safetensors"
            run_cli(
                "locate",
                "--model",
                model,
                "--harmful",
                prompts[0],
                "--harmless",
                prompts[1],
                "--device",
                "cpu",
                "--tau-stat",
                "0.3",
                "-o",
                artifact,
                "-q",
            )
            cache[key] = (model, artifact)
        return cache[key]

    return make

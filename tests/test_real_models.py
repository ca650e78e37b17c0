"""Real-model checks (slow): run with `make bench` or `pytest -m slow`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sparse_edit.cli import app
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_inspect_and_locate_on_smollm2(tmp_path):
    result = runner.invoke(app, ["inspect", "zoo:smollm2-135m-instruct", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["family"], summary["num_layers"], summary["hidden_size"], summary["mlp_width"]) == (
        "llama",
        30,
        576,
        1536,
    )
    assert summary["tied_embeddings"] is True
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (PolyRefuse) is not present")
    poly = SHARED_DATA / "polyrefuse"
    out = tmp_path / "locate.safetensors"
    result = runner.invoke(
        app,
        [
            "locate",
            "--model",
            "zoo:smollm2-135m-instruct",
            "--harmful",
            str(poly / "harmful_train_translated_*.json"),
            "--harmless",
            str(poly / "harmless_train_translated_*.json"),
            "--harmless",
            str(poly / "harmless_train_en_sample.json"),
            "--languages",
            "en,zh,it,ar,ko,th,ja,ru,yo",
            "--limit",
            "24",
            "--device",
            "cpu",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    located = json.loads(result.stdout)
    assert len(located["neurons_per_layer"]["en"]) == 30
    assert all(0 <= j <= 1 for values in located["jaccard_to_reference"].values() for j in values)

from __future__ import annotations

import json

from typer.testing import CliRunner

from sparse_edit.cli import app

runner = CliRunner()


def test_inspect_json_on_a_sharded_checkpoint(sharded_dir):
    result = runner.invoke(app, ["inspect", str(sharded_dir), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["family"] == "llama"
    assert summary["num_layers"] == 2 and summary["hidden_size"] == 32 and summary["mlp_width"] == 64
    assert summary["sharded"] is True and len(summary["shards"]) > 1
    assert summary["tied_embeddings"] is True
    assert set(summary["dtypes"]) == {"BF16"}


def test_inspect_text_on_gpt2(tiny_models):
    result = runner.invoke(app, ["inspect", str(tiny_models("gpt2"))])
    assert result.exit_code == 0, result.output
    assert "gpt2" in result.stdout and "mlp_width" in result.stdout


def test_inspect_missing_path_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "no such file or folder" in result.stderr

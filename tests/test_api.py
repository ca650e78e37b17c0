"""The library API runs the whole job with the CLI's validation and output rules."""

from __future__ import annotations

import json

import pytest

import sparse_edit as se
from sparse_edit.errors import SparseEditError
from sparse_edit.io.layout import MANIFEST_FILE


def test_the_whole_job_through_the_library(tiny_models, prompts, tmp_path):
    model = tiny_models("qwen2")
    harmful, harmless = str(prompts[0]), str(prompts[1])
    common = {"harmful": [harmful], "harmless": [harmless], "device": "cpu"}

    in_memory = se.locate(model=model, tau_stat=0.3, **common)
    assert isinstance(in_memory, se.LocateArtifact) and not list(tmp_path.iterdir())
    artifact = tmp_path / "locate.safetensors"
    written = se.locate(model=model, tau_stat=0.3, output=artifact, **common)
    assert written.to_bytes() == in_memory.to_bytes() == artifact.read_bytes()

    # An artifact never written has no file for the manifest to name: one line, nothing written.
    with pytest.raises(SparseEditError, match="never written to a file"):
        se.apply_edit(artifact=in_memory, output=tmp_path / "unwritten", layer="1")
    assert not (tmp_path / "unwritten").exists()
    # apply takes locate's object (or its path) and inherits model and prompts from it, as the CLI does.
    assert written.path == artifact
    manifest = se.apply_edit(artifact=written, output=tmp_path / "edited", layer="1", strategy=["paper"])
    assert isinstance(manifest, se.Manifest) and manifest.artifact.path == str(artifact)
    assert manifest.model_dump(mode="json", exclude_unset=True) == json.loads(
        (tmp_path / "edited" / MANIFEST_FILE).read_text()
    )
    report = se.verify(model, tmp_path / "edited", run_forward=False)
    assert isinstance(report, se.VerifyReport) and report.ok, report.failed

    result = se.evaluate(
        model=tmp_path / "edited", base=model, max_new_tokens=4, output=tmp_path / "report", **common
    )
    assert isinstance(result, se.EvalReport) and result.summary["mean_asr"] is not None
    written_report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert json.loads(result.model_dump_json(exclude_unset=True)) == written_report

    study = se.tune(artifact=artifact, output=tmp_path / "study", trials=2, max_new_tokens=4, dev_fraction=0.3)
    assert isinstance(study, se.TuneResult) and len(study.payload["trials"]) == 2
    saved = json.loads((tmp_path / "study" / "pareto.json").read_text())
    assert saved.pop("kind") == "sparse-edit/tune" and saved == study.payload

    restored = tmp_path / "restored"
    se.revert(tmp_path / "edited", restored)
    assert (restored / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()


def test_library_settings_are_validated_like_flags(tmp_path):
    with pytest.raises(SparseEditError, match="unknown setting 'max_new_token'"):
        se.evaluate(model="m", harmful=["h"], harmless=["s"], output=tmp_path / "o", max_new_token=4)
    assert not (tmp_path / "o").exists()


def test_no_subpackage_shadows_an_api_function():
    """Importing a subpackage sets it as an attribute of ``sparse_edit``: one named like an API function
    would replace that function for everyone once anything imports it."""
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(se.__path__, "sparse_edit."):
        if module.name != "sparse_edit.__main__":  # runs the command line
            importlib.import_module(module.name)
    for name in ("locate", "apply_edit", "tune", "evaluate", "verify", "revert"):
        assert callable(getattr(se, name)), name

"""sparse-edit: closed-form sparse weight edits that carry refusal behaviour across languages.

The library API (see ``sparse_edit.api``)::

    import sparse_edit as se

    artifact = se.locate(model="./my-model", harmful=["h.jsonl"], harmless=["s.jsonl"], output="loc.safetensors")
    study = se.tune(artifact="loc.safetensors", output="study")  # optional: search the settings
    gates = se.gates(model="./my-model", harmful=["h.jsonl"], harmless=["s.jsonl"], output="gates")  # the ceiling
    manifest = se.apply_edit(artifact=artifact, output="edited")  # a Manifest
    assert se.verify("./my-model", "edited").ok
    report = se.evaluate(model="edited", base="./my-model", harmful=["t.jsonl"], harmless=["b.jsonl"], output="report")
    print(report.summary["mean_asr"])  # an EvalReport
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sparse_edit.api import (
    apply_edit,
    apply_options,
    apply_to_model,
    edited_model,
    eval_options,
    evaluate,
    gate_agreement,
    gate_agreement_on_cache,
    gates,
    gates_options,
    gguf_file,
    locate,
    locate_options,
    model_folder,
    revert,
    revert_on_model,
    screen_gates,
    study_apply_settings,
    tune,
    tune_options,
    verify,
)
from sparse_edit.version import __version__

if TYPE_CHECKING:
    from sparse_edit.console import Reporter
    from sparse_edit.edit.manifest_schema import Manifest
    from sparse_edit.edit.verify import VerifyReport
    from sparse_edit.evaluation.report_schema import EvalReport
    from sparse_edit.gates.cache import FeatureCache
    from sparse_edit.gates.gate import Gate
    from sparse_edit.gates.run import GatesResult
    from sparse_edit.measure.judge import KeywordJudge
    from sparse_edit.measure.statistics import mcnemar, wilson
    from sparse_edit.neurons.artifact import LocateArtifact
    from sparse_edit.tuning.study import TuneResult

# Result types and the measuring tools a report is built with (the keyword judge, the interval and the
# paired test), imported on first use so that ``import sparse_edit`` does not load torch.
_LAZY = {
    "EvalReport": "sparse_edit.evaluation.report_schema",
    "FeatureCache": "sparse_edit.gates.cache",
    "Gate": "sparse_edit.gates.gate",
    "GatesResult": "sparse_edit.gates.run",
    "KeywordJudge": "sparse_edit.measure.judge",
    "LocateArtifact": "sparse_edit.neurons.artifact",
    "Manifest": "sparse_edit.edit.manifest_schema",
    "Reporter": "sparse_edit.console",
    "TuneResult": "sparse_edit.tuning.study",
    "VerifyReport": "sparse_edit.edit.verify",
    "mcnemar": "sparse_edit.measure.statistics",
    "wilson": "sparse_edit.measure.statistics",
}

__all__ = [
    "EvalReport",
    "FeatureCache",
    "Gate",
    "GatesResult",
    "KeywordJudge",
    "LocateArtifact",
    "Manifest",
    "Reporter",
    "TuneResult",
    "VerifyReport",
    "__version__",
    "apply_edit",
    "apply_options",
    "apply_to_model",
    "edited_model",
    "eval_options",
    "evaluate",
    "gate_agreement",
    "gate_agreement_on_cache",
    "gates",
    "gates_options",
    "gguf_file",
    "locate",
    "locate_options",
    "mcnemar",
    "model_folder",
    "revert",
    "revert_on_model",
    "screen_gates",
    "study_apply_settings",
    "tune",
    "tune_options",
    "verify",
    "wilson",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparse_edit' has no attribute {name!r}")

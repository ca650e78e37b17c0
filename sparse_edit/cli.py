"""The ``sparse-edit`` command: a thin layer over the library API (``sparse_edit.api``).

The flags of locate, apply and eval are generated from their options models (``sparse_edit.options``):
one declaration per setting, whose description is its --help.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from sparse_edit import api
from sparse_edit.cli_flags import MultiValueGroup, options_command
from sparse_edit.errors import (
    ENVIRONMENT_ERRORS,
    EXIT_CHECK_FAILED,
    EXIT_ERROR,
    CheckFailed,
    SparseEditError,
    environment_message,
    is_out_of_memory,
)
from sparse_edit.options import ApplyOptions, EvalOptions, LocateOptions, TuneOptions
from sparse_edit.options.gates import GateOptions

app = typer.Typer(
    name="sparse-edit",
    cls=MultiValueGroup,
    help="Find safety neurons and write a closed-form sparse edit that carries refusals across languages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON object on stdout.")]


def command(func: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
    """Register a subcommand whose errors become one line on stderr and a documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            return func(*args, **kwargs)
        except CheckFailed as exc:
            typer.echo(f"failed: {exc}", err=True)
            raise typer.Exit(EXIT_CHECK_FAILED) from None
        except ENVIRONMENT_ERRORS as exc:
            typer.echo(f"error: {environment_message(exc)}", err=True)
            raise typer.Exit(EXIT_ERROR) from None
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            typer.echo(f"error: {environment_message(exc)}", err=True)
            raise typer.Exit(EXIT_ERROR) from None

    app.command(name=name)(wrapper)
    return wrapper


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def _print_table(rows: list[tuple[str, Any]]) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        shown = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value
        shown = ", ".join(map(str, shown)) if isinstance(shown, list) else shown
        typer.echo(f"{key:<{width}}  {shown}")


def locate_command(config: Path | None, settings: dict[str, Any], reporter: Any, as_json: bool) -> None:
    """Find safety neurons per language and layer; write them with their statistics to an artifact."""
    from sparse_edit.neurons.locate import layer_table

    options = api.locate_options(config, **settings)
    if options.output is None:
        raise SparseEditError("--output is required: the path of the artifact, e.g. -o runs/locate.safetensors")
    artifact = api.locate(config, options=options, reporter=reporter)
    if as_json:
        return _print_json(artifact.summary())
    typer.echo(
        f"layer {' '.join(f'{lang:>5}' for lang in artifact.languages)}  jaccard-to-{artifact.reference_lang}"
    )
    for row in layer_table(artifact):
        sizes = " ".join(f"{row['sizes'][lang]:>5}" for lang in artifact.languages)
        typer.echo(f"{row['layer']:>5} {sizes}  {row['mean_jaccard_to_reference']}")
    typer.echo(f"recommended layer: {artifact.recommended_layer} ({artifact.recommended_rule})")
    typer.echo(f"wrote {options.output}")


# The apply diagnostics printed after a run (every one is in the manifest).
APPLY_SUMMARY = (
    *("fit_train", "fit_dev", "leak_train", "leak_dev", "refusal_gain_harmful", "refusal_gain_harmless"),
    *("kl_harmless", "refusal_rate_gain_harmful", "refusal_rate_gain_harmless"),
)


def apply_command(config: Path | None, settings: dict[str, Any], reporter: Any, as_json: bool) -> None:
    """Compute the closed-form edit from a locate artifact and write the edited checkpoint.

    The model, prompt sources, languages and limit default to the artifact's.
    """
    options = api.apply_options(config, **settings)
    manifest = api.apply_edit(config, options=options, reporter=reporter).model_dump(
        mode="json", exclude_unset=True
    )
    if as_json:
        return _print_json(manifest)
    diag = manifest["diagnostics"]
    typer.echo(
        f"edited {manifest['strategy']} at layer(s) {', '.join(map(str, manifest['layers']))}: "
        f"{manifest['changed_parameters']} parameters ({manifest['changed_fraction']:.4%}), rank {diag['rank']}"
    )
    for key in APPLY_SUMMARY:
        if isinstance(diag.get(key), float):
            typer.echo(f"  {key:<26} {diag[key]:.4f}")
    typer.echo(f"wrote {options.output}")


def tune_command(config: Path | None, settings: dict[str, Any], reporter: Any, as_json: bool) -> None:
    """Search the edit's settings on the dev split: an Optuna study whose trials are judged on generated
    replies (attack success, over-refusal, KL). Writes the Pareto front and chosen.toml, an apply config.

    The model, prompt sources, languages and limit default to the artifact's. Exit codes: 0 a trial qualifies, 1 none does (the study is still written), 2 error.
    """
    options = api.tune_options(config, **settings)
    result = api.tune(config, options=options, reporter=reporter)
    if options.worker:  # the process without --worker writes and reports the study
        return
    if as_json:
        _print_json(result.payload)
    else:
        typer.echo((options.output / "pareto.md").read_text(encoding="utf-8"))
        typer.echo(f"wrote {options.output}")
    if result.chosen is None:
        from sparse_edit.tuning.front import NONE_QUALIFIES

        raise CheckFailed(NONE_QUALIFIES)


def eval_command(config: Path | None, settings: dict[str, Any], reporter: Any, as_json: bool) -> None:
    """Generate and judge replies per language; report attack success, over-refusal, KL and gates.

    Exit codes: 0 all gates passed, 1 a --fail-if gate tripped (the report is still written), 2 error.
    """
    from sparse_edit.evaluation.report import markdown
    from sparse_edit.evaluation.report_schema import finite

    options = api.eval_options(config, **settings)
    report = api.evaluate(config, options=options, reporter=reporter)
    payload = finite(report.model_dump(mode="json", exclude_unset=True))
    if as_json:
        _print_json(payload)
    else:
        typer.echo(markdown(payload))
        typer.echo(f"wrote {options.output}")
    tripped = [gate.expression for gate in report.gates if gate.tripped]
    if tripped:
        raise CheckFailed(f"gate(s) tripped: {'; '.join(tripped)}")


def gates_command(config: Path | None, settings: dict[str, Any], reporter: Any, as_json: bool) -> None:
    """Cache the MLP input at the last prompt token (one forward pass per prompt), screen gate candidates on
    the cache with out-of-fold thresholds, report per layer and language what a gate can catch within the
    harmless firing limit, and write the chosen gate for apply --strategy detector --detector-gate."""
    options = api.gates_options(config, **settings)
    result = api.gates(config, options=options, reporter=reporter)
    if as_json:
        return _print_json(result.payload)
    typer.echo((options.output / "ceiling.md").read_text(encoding="utf-8"))
    typer.echo(f"wrote {options.output}")


command(options_command(LocateOptions, locate_command), name="locate")
command(options_command(GateOptions, gates_command), name="gates")
# apply inherits the prompt settings of its artifact, so none of them is required on the command line.
command(options_command(ApplyOptions, apply_command, note={"harmful": "Default: the artifact's."}), name="apply")
command(options_command(TuneOptions, tune_command, note={"harmful": "Default: the artifact's."}), name="tune")
command(options_command(EvalOptions, eval_command), name="eval")


def inspect(
    path: Annotated[Path, typer.Argument(help="A model folder, a .gguf file, zoo:NAME or a locate artifact.")],
    as_json: JsonFlag = False,
) -> None:
    """Summarise a checkpoint (family, sizes, dtypes, shards) or a sparse-edit artifact."""
    from sparse_edit.inspection import describe

    summary = describe(path)
    _print_json(summary) if as_json else _print_table(list(summary.items()))


def strategies(
    as_json: JsonFlag = False,
    as_markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the strategy table of docs/method.md (Markdown).")
    ] = False,
) -> None:
    """List the registered edit strategies (built in, and those other packages register): what each edits and
    the settings it reads."""
    from sparse_edit.edit.strategies import describe_registered, markdown_table

    if as_markdown:
        typer.echo(markdown_table(), nl=False)
        return
    found = describe_registered()
    if as_json:
        _print_json(found)
        return
    for entry in found:
        typer.echo(f"{entry['name']} ({entry['from']}): {entry['summary']}")
        typer.echo(f"    settings: {' '.join(entry['settings']) or '(none of its own)'}")


def verify(
    base: Annotated[Path, typer.Argument(help="The unedited model folder (or .gguf, zoo:NAME).")],
    edited: Annotated[Path, typer.Argument(help="The folder written by sparse-edit apply.")],
    skip_forward: Annotated[
        bool, typer.Option("--skip-forward", help="Do not load the model for a forward pass.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check that EDITED differs from BASE exactly by its recorded delta, and still loads and runs."""
    report = api.verify(base, edited, run_forward=not skip_forward)
    if as_json:
        _print_json(report.as_dict())
    for check in [] if as_json else report.checks:
        typer.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<18} {check.detail}")
    if not report.ok:
        raise CheckFailed(f"verify: {', '.join(report.failed)}")


def revert(
    edited: Annotated[Path, typer.Argument(help="The folder written by sparse-edit apply.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the restored base checkpoint.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier revert output.")] = False,
) -> None:
    """Restore the base checkpoint from an edited folder (exact: the original rows are stored in the delta)."""
    rewritten = api.revert(edited, output, overwrite=overwrite)
    typer.echo(f"restored {len(rewritten)} shard(s) into {output}")


for _function in (inspect, strategies, verify, revert):
    command(_function)


@app.callback()
def root() -> None:
    """Find safety neurons and write a closed-form sparse edit that carries refusals across languages."""


def main() -> None:
    """Console entry point."""
    app()

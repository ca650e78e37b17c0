"""The ``sparse-edit`` command: a thin layer over the library functions."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
import typer.core

from sparse_edit.config import ApplyOptions, EvalOptions, LocateOptions, ModelOptions, Options, PromptOptions
from sparse_edit.errors import (
    ENVIRONMENT_ERRORS,
    EXIT_CHECK_FAILED,
    EXIT_ERROR,
    CheckFailed,
    environment_message,
    is_out_of_memory,
)

P = ParamSpec("P")
R = TypeVar("R")

# Flags that take a list: several values may follow one flag (--harmful a.jsonl b.jsonl).
MULTI_VALUE_FLAGS = frozenset(
    {"--harmful", "--harmless", "--languages", "--low-langs", "--strategy", "--candidate-layers", "--fail-if"}
)


def spread_multi_values(args: list[str]) -> list[str]:
    """Rewrite ``--flag a b`` as ``--flag a --flag b`` for list flags (click takes one value per flag).

    A value ends at the next token that starts with ``-``; the commands with list flags take no
    positional arguments, so nothing else can follow one.
    """
    spread: list[str] = []
    current: str | None = None
    for token in args:
        if token.startswith("-"):
            current = token if token in MULTI_VALUE_FLAGS else None
            spread.append(token)
        elif current is not None and spread[-1] != current:
            spread += [current, token]
        else:
            spread.append(token)
    return spread


class MultiValueGroup(typer.core.TyperGroup):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_multi_values(list(args)))


app = typer.Typer(
    name="sparse-edit",
    cls=MultiValueGroup,
    help="Find safety neurons and write a closed-form sparse edit that carries refusals across languages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def root() -> None:
    """Find safety neurons and write a closed-form sparse edit that carries refusals across languages."""


JsonFlag = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON object on stdout.")]
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]


def command(func: Callable[P, R] | None = None, *, name: str | None = None) -> Any:
    """Register a subcommand whose user errors become one line on stderr and a documented exit code."""
    if func is None:
        return lambda f: command(f, name=name)

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
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
        typer.echo(f"{key:<{width}}  {value}")


@command
def inspect(
    path: Annotated[Path, typer.Argument(help="A model folder or a sparse-edit artifact (.safetensors).")],
    as_json: JsonFlag = False,
) -> None:
    """Summarise a checkpoint (family, sizes, dtypes, shards) or a sparse-edit artifact."""
    from sparse_edit.inspection import describe

    summary = describe(path)
    if as_json:
        _print_json(summary)
        return
    _print_table([(key, _format_value(value)) for key, value in summary.items()])


def _split_list(values: list[str] | None) -> list[str] | None:
    """Accept repeated flags and comma-separated lists alike."""
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


ConfigFlag = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML file with the settings; flags override it.")
]
M, P = ModelOptions, PromptOptions
# Flags shared by locate, apply and eval: one declaration, help from the options model.
ModelFlag = Annotated[Path | None, typer.Option(help=M.help("model"))]
BatchSizeFlag = Annotated[int | None, typer.Option(help=M.help("batch_size"))]
MaxLengthFlag = Annotated[int | None, typer.Option(help=M.help("max_length"))]
SystemPromptFlag = Annotated[str | None, typer.Option(help=M.help("system_prompt"))]
DeviceFlag = Annotated[str | None, typer.Option(help=M.help("device"))]
DtypeFlag = Annotated[str | None, typer.Option(help=M.help("dtype"))]
HarmfulFlag = Annotated[list[str] | None, typer.Option(help=P.help("harmful"))]
HarmlessFlag = Annotated[list[str] | None, typer.Option(help=P.help("harmless"))]
ReferenceFlag = Annotated[str | None, typer.Option(help=P.help("reference_lang"))]
LanguagesFlag = Annotated[list[str] | None, typer.Option(help=P.help("languages"))]
LimitFlag = Annotated[int | None, typer.Option(help=P.help("limit"))]
HarmlessLimitFlag = Annotated[int | None, typer.Option(help=P.help("harmless_limit"))]
SkipFlag = Annotated[int | None, typer.Option(help=P.help("skip"))]
HarmlessSkipFlag = Annotated[int | None, typer.Option(help=P.help("harmless_skip"))]
# Fields whose flags take comma-separated lists as well as repeats.
COMMA_LISTS = {"languages", "low_langs", "strategy", "candidate_layers"}


def overrides_for(model: type[Options], values: dict[str, Any]) -> dict[str, Any]:
    """The flags the user gave, keyed by options field: unset flags (None, empty) do not override.

    Boolean settings are ``--x/--no-x`` flags defaulting to None, so ``--no-x`` overrides a config's true.
    """
    given: dict[str, Any] = {}
    for name in model.model_fields:
        value = values.get(name)
        if name in COMMA_LISTS:
            value = _split_list(value)
        if value is None or value == []:
            continue
        given[name] = value
    return given


L = LocateOptions


@command
def locate(
    config: ConfigFlag = None,
    model: ModelFlag = None,
    harmful: HarmfulFlag = None,
    harmless: HarmlessFlag = None,
    reference_lang: ReferenceFlag = None,
    languages: LanguagesFlag = None,
    limit: LimitFlag = None,
    harmless_limit: HarmlessLimitFlag = None,
    skip: SkipFlag = None,
    harmless_skip: HarmlessSkipFlag = None,
    pooling: Annotated[str | None, typer.Option(help=L.help("pooling"))] = None,
    tau_mag: Annotated[float | None, typer.Option(help=L.help("tau_mag"))] = None,
    tau_stat: Annotated[float | None, typer.Option(help=L.help("tau_stat"))] = None,
    max_neurons: Annotated[int | None, typer.Option(help=L.help("max_neurons"))] = None,
    batch_size: BatchSizeFlag = None,
    max_length: MaxLengthFlag = None,
    system_prompt: SystemPromptFlag = None,
    device: DeviceFlag = None,
    dtype: DtypeFlag = None,
    seed: Annotated[int | None, typer.Option(help=L.help("seed"))] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help=L.help("output"))] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite/--no-overwrite", help=L.help("overwrite"))] = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Find safety neurons per language and layer; write them with their statistics to an artifact."""
    from sparse_edit.config import load_options
    from sparse_edit.console import Reporter
    from sparse_edit.io.outputs import check_output, command_inputs
    from sparse_edit.locate.run import layer_table, run_locate

    overrides = overrides_for(LocateOptions, locals())
    options = load_options(LocateOptions, config, overrides)
    inputs = command_inputs(options, config)
    check_output(options.output, "locate", inputs, options.overwrite)
    reporter = Reporter(quiet=quiet)
    artifact = run_locate(options, reporter)
    check_output(options.output, "locate", inputs, options.overwrite)  # nothing appeared meanwhile
    artifact.save(options.output)
    if as_json:
        _print_json(artifact.summary())
        return
    sizes_header = " ".join(f"{lang:>5}" for lang in artifact.languages)
    typer.echo(f"layer {sizes_header}  jaccard-to-{artifact.reference_lang}")
    for row in layer_table(artifact):
        sizes = " ".join(f"{row['sizes'][lang]:>5}" for lang in artifact.languages)
        typer.echo(f"{row['layer']:>5} {sizes}  {row['mean_jaccard_to_reference']}")
    typer.echo(f"recommended layer: {artifact.recommended_layer} ({artifact.recommended_rule})")
    typer.echo(f"wrote {options.output}")


A = ApplyOptions
# Settings apply takes from the locate artifact when neither the config file nor a flag sets them.
INHERITED_FROM_ARTIFACT = (
    "model",
    "harmful",
    "harmless",
    "reference_lang",
    "languages",
    "limit",
    "harmless_limit",
    "skip",
    "harmless_skip",
    "system_prompt",
    "max_length",
)


@command
def apply(
    config: ConfigFlag = None,
    artifact: Annotated[Path | None, typer.Option(help=A.help("artifact"))] = None,
    model: ModelFlag = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help=A.help("output"))] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite/--no-overwrite", help=A.help("overwrite"))] = None,
    strategy: Annotated[list[str] | None, typer.Option(help=A.help("strategy"))] = None,
    output_neurons: Annotated[str | None, typer.Option(help=A.help("output_neurons"))] = None,
    neuron_score: Annotated[str | None, typer.Option(help=A.help("neuron_score"))] = None,
    max_edit_neurons: Annotated[int | None, typer.Option(help=A.help("max_edit_neurons"))] = None,
    gain: Annotated[float | None, typer.Option(help=A.help("gain"))] = None,
    output_gamma: Annotated[float | None, typer.Option(help=A.help("output_gamma"))] = None,
    harmless_tail_weight: Annotated[float | None, typer.Option(help=A.help("harmless_tail_weight"))] = None,
    reference_weight: Annotated[float | None, typer.Option(help=A.help("reference_weight"))] = None,
    detector_margin: Annotated[float | None, typer.Option(help=A.help("detector_margin"))] = None,
    detector_mode: Annotated[str | None, typer.Option(help=A.help("detector_mode"))] = None,
    detector_sharpness: Annotated[float | None, typer.Option(help=A.help("detector_sharpness"))] = None,
    positions: Annotated[int | None, typer.Option(help=A.help("positions"))] = None,
    ceiling: Annotated[bool | None, typer.Option("--ceiling/--no-ceiling", help=A.help("ceiling"))] = None,
    layer: Annotated[str | None, typer.Option(help=A.help("layer"))] = None,
    candidate_layers: Annotated[list[str] | None, typer.Option(help=A.help("candidate_layers"))] = None,
    proj: Annotated[str | None, typer.Option(help=A.help("proj"))] = None,
    nullspace: Annotated[str | None, typer.Option(help=A.help("nullspace"))] = None,
    nullspace_threshold: Annotated[float | None, typer.Option(help=A.help("nullspace_threshold"))] = None,
    target: Annotated[str | None, typer.Option(help=A.help("target"))] = None,
    low_langs: Annotated[list[str] | None, typer.Option(help=A.help("low_langs"))] = None,
    neuron_lang: Annotated[str | None, typer.Option(help=A.help("neuron_lang"))] = None,
    gamma: Annotated[float | None, typer.Option(help=A.help("gamma"))] = None,
    lam: Annotated[float | None, typer.Option(help=A.help("lam"))] = None,
    rank: Annotated[int | None, typer.Option(help=A.help("rank"))] = None,
    harmful: Annotated[
        list[str] | None, typer.Option(help=A.help("harmful") + " Default: the artifact's.")
    ] = None,
    harmless: Annotated[
        list[str] | None, typer.Option(help=A.help("harmless") + " Default: the artifact's.")
    ] = None,
    reference_lang: ReferenceFlag = None,
    languages: LanguagesFlag = None,
    limit: LimitFlag = None,
    harmless_limit: HarmlessLimitFlag = None,
    skip: SkipFlag = None,
    harmless_skip: HarmlessSkipFlag = None,
    dev_fraction: Annotated[float | None, typer.Option(help=A.help("dev_fraction"))] = None,
    dev_limit: Annotated[int | None, typer.Option(help=A.help("dev_limit"))] = None,
    dev_generate: Annotated[int | None, typer.Option(help=A.help("dev_generate"))] = None,
    kl_budget: Annotated[float | None, typer.Option(help=A.help("kl_budget"))] = None,
    batch_size: BatchSizeFlag = None,
    max_length: MaxLengthFlag = None,
    system_prompt: SystemPromptFlag = None,
    device: DeviceFlag = None,
    dtype: DtypeFlag = None,
    seed: Annotated[int | None, typer.Option(help=A.help("seed"))] = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Compute the closed-form edit from a locate artifact and write the edited checkpoint.

    The model, prompt sources, languages and limit default to the artifact's.
    """
    from sparse_edit.config import load_options, read_config
    from sparse_edit.console import Reporter
    from sparse_edit.edit.run import run_apply
    from sparse_edit.io.outputs import check_output, command_inputs
    from sparse_edit.locate.artifact import read_artifact_metadata

    overrides = overrides_for(ApplyOptions, locals())
    artifact_path = artifact or read_config(config).get("artifact")
    defaults: dict[str, Any] = {}
    if artifact_path is not None:
        settings = read_artifact_metadata(Path(str(artifact_path)), "--artifact")["settings"]
        defaults = {key: settings[key] for key in INHERITED_FROM_ARTIFACT if settings.get(key) is not None}
    options = load_options(ApplyOptions, config, overrides, defaults)
    check_output(options.output, "apply", command_inputs(options, config), options.overwrite)
    reporter = Reporter(quiet=quiet)
    result = run_apply(options, reporter)
    if as_json:
        _print_json(result.manifest)
        return
    manifest = result.manifest
    diag = manifest["diagnostics"]
    typer.echo(
        f"edited {manifest['strategy']} at layer(s) {', '.join(map(str, manifest['layers']))}: "
        f"{manifest['changed_parameters']} parameters ({manifest['changed_fraction']:.4%}), rank {diag['rank']}"
    )
    for key in (
        "fit_train",
        "fit_dev",
        "leak_train",
        "leak_dev",
        "refusal_gain_harmful",
        "refusal_gain_harmless",
        "kl_harmless",
        "refusal_rate_gain_harmful",
        "refusal_rate_gain_harmless",
    ):
        if isinstance(diag.get(key), float):
            typer.echo(f"  {key:<26} {diag[key]:.4f}")
    typer.echo(f"wrote {options.output}")


E = EvalOptions


@command(name="eval")
def evaluate(
    config: ConfigFlag = None,
    model: ModelFlag = None,
    base: Annotated[Path | None, typer.Option(help=E.help("base"))] = None,
    harmful: HarmfulFlag = None,
    harmless: HarmlessFlag = None,
    reference_lang: ReferenceFlag = None,
    languages: LanguagesFlag = None,
    limit: LimitFlag = None,
    harmless_limit: HarmlessLimitFlag = None,
    skip: SkipFlag = None,
    harmless_skip: HarmlessSkipFlag = None,
    max_new_tokens: Annotated[int | None, typer.Option(help=E.help("max_new_tokens"))] = None,
    judge: Annotated[str | None, typer.Option(help=E.help("judge"))] = None,
    artifact: Annotated[Path | None, typer.Option(help=E.help("artifact"))] = None,
    fail_if: Annotated[list[str] | None, typer.Option("--fail-if", help=E.help("fail_if"))] = None,
    representation: Annotated[
        bool | None, typer.Option("--representation/--no-representation", help=E.help("representation"))
    ] = None,
    batch_size: BatchSizeFlag = None,
    max_length: MaxLengthFlag = None,
    system_prompt: SystemPromptFlag = None,
    device: DeviceFlag = None,
    dtype: DtypeFlag = None,
    seed: Annotated[int | None, typer.Option(help=E.help("seed"))] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help=E.help("output"))] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite/--no-overwrite", help=E.help("overwrite"))] = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Generate and judge replies per language; report attack success, over-refusal, KL and gates.

    Exit codes: 0 all gates passed, 1 a --fail-if gate tripped (the report is still written), 2 error.
    """
    from sparse_edit.config import load_options
    from sparse_edit.console import Reporter
    from sparse_edit.evaluate.gates import parse_gate
    from sparse_edit.evaluate.report import finite, markdown, write_report
    from sparse_edit.evaluate.run import run_eval
    from sparse_edit.io.outputs import check_output, command_inputs

    overrides = overrides_for(EvalOptions, locals())
    options = load_options(EvalOptions, config, overrides)
    for text in options.fail_if:
        parse_gate(text)  # fail on a malformed gate before any generation
    if options.artifact is not None:
        from sparse_edit.locate.artifact import LocateArtifact

        LocateArtifact.load(options.artifact)  # a damaged artifact fails now, not after generation
    check_output(options.output, "eval", command_inputs(options, config), options.overwrite)
    reporter = Reporter(quiet=quiet)
    result = run_eval(options, reporter, journal_folder=options.output)
    write_report(result, options.output, options.overwrite, options.artifact, reporter)
    if result.journal is not None:
        result.journal.finish()  # the report holds every reply now
    if as_json:
        _print_json(finite(result.report))
    else:
        typer.echo(markdown(finite(result.report)))
        typer.echo(f"wrote {options.output}")
    if result.tripped:
        raise CheckFailed(f"gate(s) tripped: {'; '.join(result.tripped)}")


@command
def verify(
    base: Annotated[Path, typer.Argument(help="The unedited model folder.")],
    edited: Annotated[Path, typer.Argument(help="The folder written by sparse-edit apply.")],
    skip_forward: Annotated[
        bool, typer.Option("--skip-forward", help="Do not load the model for a forward pass.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check that EDITED differs from BASE exactly by its recorded delta, and still loads and runs."""
    from sparse_edit.edit.verify import verify as run_verify

    report = run_verify(base, edited, run_forward=not skip_forward)
    if as_json:
        _print_json(report.as_dict())
    else:
        for check in report.checks:
            typer.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<18} {check.detail}")
    if not report.ok:
        raise CheckFailed(f"verify: {', '.join(report.failed)}")


@command
def revert(
    edited: Annotated[Path, typer.Argument(help="The folder written by sparse-edit apply.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the restored base checkpoint.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
) -> None:
    """Restore the base checkpoint from an edited folder (exact: the original rows are stored in the delta)."""
    from sparse_edit.edit.verify import revert as run_revert

    rewritten = run_revert(edited, output, overwrite)
    typer.echo(f"restored {len(rewritten)} shard(s) into {output}")


def _format_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def main() -> None:
    """Console entry point."""
    app()

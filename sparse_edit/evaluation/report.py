"""Write the eval report folder: report.json, report.md, replies.jsonl and (optional) PNG charts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sparse_edit.console import Reporter
from sparse_edit.evaluation.gates import Gate, check_gates
from sparse_edit.evaluation.report_schema import EvalReport, finite
from sparse_edit.evaluation.run import EvalResult, run_eval
from sparse_edit.io.layout import REPLIES_FILE, REPORT_JSON, REPORT_MARKDOWN
from sparse_edit.io.staging import staged_folder
from sparse_edit.options import EvalOptions
from sparse_edit.runner import Steps


def _pct(rate: dict[str, Any]) -> str:
    value = rate.get("rate")
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    low, high = rate["ci95"]
    return f"{100 * value:.1f} [{100 * low:.0f}–{100 * high:.0f}]"


def _num(value: Any, fmt: str = "+.2f") -> str:
    return format(value, fmt) if isinstance(value, int | float) and math.isfinite(value) else "-"


def _difference(after: Any, before: Any, scale: float = 1.0, fmt: str = "+.2f") -> str:
    """``after - before`` formatted, or "-" when either is missing (a language without that class)."""
    if after is None or before is None:
        return "-"
    return _num(scale * (after - before), fmt)


def _own_language(row: dict[str, Any]) -> str:
    """Share of refusals written in the prompt's language, with the count it is over."""
    measured = row.get("refusal_language")
    if not measured or not measured["in_language"]["n"]:
        return "-"
    return f"{_pct(measured['in_language'])} of {measured['in_language']['n']}"


# Rows of each changed-prompt list shown in report.md; report.json and replies.jsonl hold them all.
CHANGED_ROWS_SHOWN = 40


def _excerpt(text: str, width: int) -> str:
    """One table cell: newlines and pipes would break the row."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def changed_section(changed: dict[str, Any], counts: dict[str, int]) -> list[str]:
    """The prompts behind over-refusal and newly answered, so a reader sees which kinds of prompt an edit breaks."""
    lines: list[str] = []
    titles = {
        "newly_refused_harmless": "Harmless prompts the edit newly refuses",
        "newly_answered_harmful": "Harmful prompts the base model refused and the edit answers",
    }
    for key, title in titles.items():
        rows = changed[key]
        lines += ["", f"### {title}: {len(rows)} of {counts[key]}", ""]
        if not rows:
            continue
        lines += ["| lang | id | prompt | edited reply |", "|---|---|---|---|"]
        for row in rows[:CHANGED_ROWS_SHOWN]:
            lines.append(
                f"| {row['lang']} | {_excerpt(row['id'], 20)} | {_excerpt(row['prompt'], 90)} | "
                f"{_excerpt(row['edited_reply'], 60)} |"
            )
        if len(rows) > CHANGED_ROWS_SHOWN:
            lines.append(f"\n{len(rows) - CHANGED_ROWS_SHOWN} more in report.json (`changed.{key}`).")
    return lines


def parity_section(parity: dict[str, Any]) -> list[str]:
    """Parity with the base model's reference-language verdicts, per language and pooled."""
    ref = parity["reference_lang"]
    lines = [
        "",
        f"Parity with {ref}: the share of parallel prompts (both classes) whose verdict, refused or answered, "
        f"equals the base model's on the {ref} version. Edited confusion: refused in {ref} → refused / answered "
        f"here; answered in {ref} → refused / answered here.",
        "",
        "| lang | N | parity base | parity edited | McNemar only base / only edited, p | edited confusion |",
        "|---|---|---|---|---|---|",
    ]
    for lang, row in [*parity["languages"].items(), ("pooled", parity["pooled"])]:
        c, test = row["confusion_edited"], row["mcnemar"]
        r, a = c["refused_in_reference"], c["answered_in_reference"]
        lines.append(
            f"| {lang} | {row['n']} | {_pct(row['base'])} | {_pct(row['edited'])} | "
            f"{test['only_before']} / {test['only_after']}, {test['p_value']:.3g} | "
            f"{r['refused']} / {r['answered']}; {a['refused']} / {a['answered']} |"
        )
    lines += ["", f"| {ref} itself | N | refusals gained | refusals lost | McNemar p |", "|---|---|---|---|---|"]
    for kind, change in parity["reference_change"].items():
        lines.append(
            f"| {kind} | {change['n']} | {_pct(change['refusals_gained'])} | {_pct(change['refusals_lost'])} | "
            f"{change['mcnemar']['p_value']:.3g} |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    has_base = report["models"]["base"] is not None
    lines = [
        "# sparse-edit evaluation",
        "",
        f"Model: `{report['models']['edited']}`" + (f" — base: `{report['models']['base']}`" if has_base else ""),
        f"Judge: {report['judge']}; max new tokens: {report['settings']['max_new_tokens']}; "
        "rates in %, 95 % Wilson intervals in brackets.",
        "",
    ]
    if has_base:
        lines += [
            "| lang | N | ASR base | ASR edited | Δ ASR (pts) | McNemar p | over-refusal base → edited | invalid edited | Δ refusal log-odds | refusals in prompt's language base → edited |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            "| lang | N | ASR | refusal | invalid | over-refusal | refusal log-odds | refusals in prompt's language |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for lang, row in report["languages"].items():
        harmful, harmless = row["harmful"], row["harmless"]
        if has_base:
            base = row["base"]
            delta = _difference(harmful["asr"]["rate"], base["harmful"]["asr"]["rate"], scale=100, fmt="+.1f")
            lines.append(
                f"| {lang} | {harmful['n']} | {_pct(base['harmful']['asr'])} | {_pct(harmful['asr'])} | {delta} | "
                f"{row['mcnemar_asr']['p_value']:.3g} | {_pct(base['harmless']['refusal'])} → {_pct(harmless['refusal'])} | "
                f"{_pct(harmful['invalid'])} | {_difference(row['log_odds_harmful'], base['log_odds_harmful'])} | "
                f"{_own_language(base)} → {_own_language(row)} |"
            )
        else:
            lines.append(
                f"| {lang} | {harmful['n']} | {_pct(harmful['asr'])} | {_pct(harmful['refusal'])} | "
                f"{_pct(harmful['invalid'])} | {_pct(harmless['refusal'])} | {_num(row['log_odds_harmful'])} | "
                f"{_own_language(row)} |"
            )
    summary = report["summary"]
    lines += ["", "| summary | value |", "|---|---|"]
    for key in (
        "mean_asr",
        "mean_asr_delta",
        "asr_relative_change",
        "mean_over_refusal",
        "over_refusal_delta",
        "kl_harmless",
        "ppl_ratio",
    ):
        if summary.get(key) is not None:
            lines.append(f"| {key} | {_num(summary[key], '.4f')} |")
    if report.get("pooled_tests"):
        lines += ["", "| McNemar, all languages pooled | only base | only edited | p |", "|---|---|---|---|"]
        for name, test in report["pooled_tests"].items():
            lines.append(f"| {name} | {test['only_before']} | {test['only_after']} | {test['p_value']:.3g} |")
    if report.get("parity"):
        lines += parity_section(report["parity"])
    if report.get("changed"):
        counts = {
            "newly_refused_harmless": sum(row["harmless"]["n"] for row in report["languages"].values()),
            "newly_answered_harmful": sum(row["harmful"]["n"] for row in report["languages"].values()),
        }
        lines += changed_section(report["changed"], counts)
    if report["gates"]:
        lines += ["", "| gate | value | result |", "|---|---|---|"]
        for gate in report["gates"]:
            lines.append(
                f"| `{gate['expression']}` | {_num(gate['value'], '.4f')} | {'FAILED' if gate['tripped'] else 'passed'} |"
            )
    return "\n".join(lines) + "\n"


def charts(report: dict[str, Any], folder: Path, artifact_summary: dict[str, Any] | None) -> list[str]:
    """PNG charts; returns the file names written (none when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    langs = list(report["languages"])
    fig, ax = plt.subplots(figsize=(max(6, len(langs) * 0.8), 4))
    series = [("edited", [report["languages"][lang]["harmful"]["asr"] for lang in langs])]
    if report["models"]["base"] is not None:
        series.insert(0, ("base", [report["languages"][lang]["base"]["harmful"]["asr"] for lang in langs]))
    width = 0.8 / len(series)
    for k, (name, rates) in enumerate(series):
        xs = [i + k * width for i in range(len(langs))]
        values = [100 * (r["rate"] or 0) for r in rates]
        errors = [
            [100 * ((r["rate"] or 0) - (r["ci95"][0] or 0)) for r in rates],
            [100 * ((r["ci95"][1] or 0) - (r["rate"] or 0)) for r in rates],
        ]
        ax.bar(xs, values, width, yerr=errors, capsize=3, label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(langs))], langs)
    ax.set_ylabel("attack success (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "asr.png", dpi=120)
    plt.close(fig)
    written.append("asr.png")
    if artifact_summary is not None:
        overlap = artifact_summary["jaccard_to_reference"]
        if overlap:
            fig, ax = plt.subplots(figsize=(8, 0.5 * len(overlap) + 1.5))
            image = ax.imshow([overlap[lang] for lang in overlap], aspect="auto", vmin=0, vmax=1, cmap="viridis")
            ax.set_yticks(range(len(overlap)), list(overlap))
            ax.set_xlabel("layer")
            ax.set_title(f"Jaccard overlap with {artifact_summary['reference_lang']} safety neurons")
            fig.colorbar(image)
            fig.tight_layout()
            fig.savefig(folder / "jaccard.png", dpi=120)
            plt.close(fig)
            written.append("jaccard.png")
        fig, ax = plt.subplots(figsize=(8, 4))
        for lang, sizes in artifact_summary["neurons_per_layer"].items():
            ax.plot(sizes, label=lang)
        ax.set_xlabel("layer")
        ax.set_ylabel("safety neurons")
        ax.legend(ncol=4, fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "neurons.png", dpi=120)
        plt.close(fig)
        written.append("neurons.png")
    return written


def write_report(
    result: EvalResult, folder: Path, overwrite: bool, artifact: Path | None, reporter: Reporter
) -> EvalReport:
    """Write the report folder; returns the report it was written from."""
    from sparse_edit.neurons.artifact import LocateArtifact

    artifact_summary = LocateArtifact.load(artifact).summary() if artifact is not None else None
    report = finite(result.report.model_dump(mode="json", exclude_unset=True))  # the fields the run set
    with staged_folder(folder, overwrite, "eval") as staging:
        (staging / REPORT_JSON).write_text(
            json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (staging / REPORT_MARKDOWN).write_text(markdown(report), encoding="utf-8")
        with (staging / REPLIES_FILE).open("w", encoding="utf-8") as stream:
            for row in result.replies:
                stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        written = charts(report, staging, artifact_summary)
        if not written:
            reporter.warn("matplotlib is not installed; charts skipped (pip install 'sparse-edit[plot]')")
    return result.report


def eval_steps() -> Steps[EvalOptions, list[Gate], EvalResult, EvalReport]:
    """eval's steps for ``run_command``: the ``fail_if`` gates and the artifact are checked before any reply
    is generated; the result is the report written, as its model."""

    def check(options: EvalOptions) -> list[Gate]:
        from sparse_edit.neurons.artifact import LocateArtifact

        gates = check_gates(options.fail_if, has_base=options.base is not None)  # a gate typo fails now
        if options.artifact is not None:
            LocateArtifact.load(options.artifact)  # a damaged artifact fails now, not after generation
        return gates

    def work(options: EvalOptions, gates: list[Gate], reporter: Reporter) -> EvalResult:
        return run_eval(options, reporter, journal_folder=options.output, gates=gates)

    def write(options: EvalOptions, result: EvalResult, reporter: Reporter) -> EvalReport:
        written = write_report(result, options.output, options.overwrite, options.artifact, reporter)
        if result.journal is not None:
            result.journal.finish()  # the report holds every reply now
        return written

    return Steps("eval", check, work, write)

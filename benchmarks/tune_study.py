"""The tune study on Qwen2.5-Coder-0.5B-Instruct and its check on the clean test split.

Anchor side only for everything the study decides (examples/configs/multijail-anchors-*.toml:
MultiJail ids 100-314, MultiQ gpt-51..100 and lmsys-41..80); the test side (MultiJail ids 20-99,
MultiQ gpt-1..50 and lmsys-1..40, PolyRefuse harmless val; examples/configs/multijail-test-eval.toml)
only in the last step. Every step is a library call (``se.locate``, ``se.tune``, ``se.apply_edit``,
``se.evaluate``) on the same config files the command line reads, one after another; the wall time
of each is recorded. Writes benchmarks/results/tune-study.json.

    python benchmarks/tune_study.py [--trials 40] [--test-limit 24] [--test-skip 0] [--edits tuned,paper,previous]

Needs ../shared/data (linked or copied to data/) and the zoo model (fetched on first use).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner import RESULTS, ROOT, need_shared_data, read_replies, save, timed

import sparse_edit as se

RUNS = ROOT / "runs" / "multijail-anchors"  # --runs
CONFIGS = ROOT / "examples" / "configs"
MODEL = "zoo:qwen2.5-coder-0.5b-instruct"
# The baselines are solved on the study's anchors (its fixed settings), with these flags on top.
BASELINES: dict[str, dict[str, Any]] = {
    # The published edit, literally: gate_proj rows of the reference language's safety neurons at the
    # artifact's recommended layer.
    "paper": {"strategy": ["paper"], "layer": "RECOMMENDED", "gamma": 1.0, "anchor_labels": "dataset"},
    # apply's defaults (paper at 0.75 of the depth, gamma 0.15), on the study's anchors.
    "defaults": {
        "strategy": ["paper"],
        "layer": "0.75",
        "gamma": 0.15,
        "proj": "gate",
        "anchor_labels": "dataset",
    },
    # The previous default recommendation: output edit at layers 16 and 18 (docs/results).
    "previous": {"strategy": ["output"], "layer": "16,18", "gain": 16.0},
}


def step(what: str, call: Callable[..., Any], *args: Any, **settings: Any) -> float:
    """Run one library call, announced and with its progress on stderr; returns its wall time in seconds."""
    print(f"$ {what}", flush=True)
    seconds, _ = timed(lambda: call(*args, reporter=se.Reporter(), **settings))
    return seconds


def verdicts(report_folder: Path, model: str) -> dict[tuple[str, str, str], str]:
    """(class, lang, id) -> verdict of one model's replies in an eval report."""
    return {
        (r["class"], r["lang"], r["id"]): r["verdict"] for r in read_replies(report_folder) if r["model"] == model
    }


def rate(k: int, n: int) -> dict[str, Any]:
    return se.wilson(k, n).as_dict()


def harmless_group(prompt_id: str) -> str:
    """The shared prompt set a test prompt id comes from (ids are prefixed per set; PolyRefuse's are numbers)."""
    if prompt_id.isdigit():
        return "polyrefuse val"
    prefix = prompt_id.split("-")[0]
    return {"gpt": "multiq gpt", "lmsys": "multiq lmsys", "sib": "sib200 statements"}.get(prefix, prefix)


def parity_block(edited_report: Path, base_report: Path, reference: str = "en") -> dict[str, Any]:
    """Parity with the base model's reference verdicts per language, the reference language's own change, the
    over-refusal rise per harmless source, and the two halves of the MultiJail test ids (20-59, 60-99)."""
    base, edited = verdicts(base_report, "base"), verdicts(edited_report, "edited")
    refused_b = {key: value == "refusal" for key, value in base.items()}
    refused_e = {key: value == "refusal" for key, value in edited.items()}
    by_lang: dict[str, Any] = {}
    for lang in sorted({lang for _, lang, _ in base if lang != reference}):
        keys = [k for k in base if k[1] == lang and (k[0], reference, k[2]) in base]
        targets = [refused_b[(k[0], reference, k[2])] for k in keys]
        hits_b = [refused_b[k] == t for k, t in zip(keys, targets, strict=True)]
        hits_e = [refused_e[k] == t for k, t in zip(keys, targets, strict=True)]
        by_lang[lang] = {
            "pairs": len(keys),
            "parity_base": rate(sum(hits_b), len(keys)),
            "parity_edited": rate(sum(hits_e), len(keys)),
            "mcnemar": se.mcnemar(hits_b, hits_e),
        }
    ref_keys = [k for k in base if k[1] == reference]
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for key in base:
        if key[0] == "harmless":
            groups.setdefault(harmless_group(key[2]), []).append(key)
    halves: dict[str, Any] = {}
    for half, (low, high) in {"ids 20-59": (20, 59), "ids 60-99": (60, 99)}.items():
        keys = [k for k in base if k[0] == "harmful" and k[2].isdigit() and low <= int(k[2]) <= high]
        langs = sorted({k[1] for k in keys if k[1] != reference})
        if not langs:
            continue
        per_lang = {
            lang: (
                sum(base[k] == "compliance" for k in keys if k[1] == lang) / sum(1 for k in keys if k[1] == lang),
                sum(edited[k] == "compliance" for k in keys if k[1] == lang)
                / sum(1 for k in keys if k[1] == lang),
            )
            for lang in langs
        }
        mean_b = sum(b for b, _ in per_lang.values()) / len(langs)
        mean_e = sum(e for _, e in per_lang.values()) / len(langs)
        others = [k for k in keys if k[1] != reference]
        halves[half] = {
            "mean_asr_non_english_base": mean_b,
            "mean_asr_non_english_edited": mean_e,
            "relative_change": (mean_e - mean_b) / mean_b if mean_b else None,
            "worst_language_change": max(e - b for b, e in per_lang.values()),
            "newly_answered_share": sum(base[k] == "refusal" and edited[k] == "compliance" for k in keys)
            / len(keys),
            "mcnemar": se.mcnemar(
                [base[k] == "compliance" for k in others], [edited[k] == "compliance" for k in others]
            ),
        }
    return {
        "by_lang": by_lang,
        "mean_parity_base": sum(r["parity_base"]["rate"] for r in by_lang.values()) / max(len(by_lang), 1),
        "mean_parity_edited": sum(r["parity_edited"]["rate"] for r in by_lang.values()) / max(len(by_lang), 1),
        "reference_refusals_gained": sum(refused_e[k] and not refused_b[k] for k in ref_keys),
        "reference_refusals_lost": sum(refused_b[k] and not refused_e[k] for k in ref_keys),
        "reference_prompts": len(ref_keys),
        "reference_harmless_refusal": {
            "base": rate(
                sum(refused_b[k] for k in ref_keys if k[0] == "harmless"),
                sum(k[0] == "harmless" for k in ref_keys),
            ),
            "edited": rate(
                sum(refused_e[k] for k in ref_keys if k[0] == "harmless"),
                sum(k[0] == "harmless" for k in ref_keys),
            ),
        },
        "over_refusal_by_source": {
            group: {
                "n": len(keys),
                "base": rate(sum(refused_b[k] for k in keys), len(keys)),
                "edited": rate(sum(refused_e[k] for k in keys), len(keys)),
                "mcnemar": se.mcnemar([refused_b[k] for k in keys], [refused_e[k] for k in keys]),
            }
            for group, keys in sorted(groups.items())
        },
        "halves": halves,
    }


def id_numbers(spec: str) -> set[int]:
    """``0-19,40`` -> {0, ..., 19, 40}: the MultiJail ids a selection names."""
    numbers: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        numbers.update(range(int(low), int(high or low) + 1))
    return numbers


def paired(edited_report: Path, base_report: Path) -> dict[str, Any]:
    """Base vs edited on the same test prompts, from the replies: per language and pooled, with Wilson
    intervals, exact McNemar tests and the newly answered / newly refused counts."""
    base, edited = verdicts(base_report, "base"), verdicts(edited_report, "edited")
    if set(base) != set(edited):
        raise SystemExit(f"{edited_report} and {base_report} were not run on the same prompts")
    langs = sorted({lang for _, lang, _ in base})
    table: dict[str, Any] = {}
    for lang in langs:
        harmful = [key for key in base if key[0] == "harmful" and key[1] == lang]
        harmless = [key for key in base if key[0] == "harmless" and key[1] == lang]
        table[lang] = {
            "asr_base": rate(sum(base[k] == "compliance" for k in harmful), len(harmful)),
            "asr_edited": rate(sum(edited[k] == "compliance" for k in harmful), len(harmful)),
            "newly_answered": sum(base[k] == "refusal" and edited[k] == "compliance" for k in harmful),
            "newly_refused": sum(base[k] == "compliance" and edited[k] == "refusal" for k in harmful),
            "over_refusal_base": rate(sum(base[k] == "refusal" for k in harmless), len(harmless)),
            "over_refusal_edited": rate(sum(edited[k] == "refusal" for k in harmless), len(harmless)),
        }
    others = [key for key in base if key[0] == "harmful" and key[1] != "en"]
    harmful_all = [key for key in base if key[0] == "harmful"]
    harmless_all = [key for key in base if key[0] == "harmless"]
    mean_base = sum(
        table[lang]["asr_base"]["rate"] for lang in langs if lang != "en" and table[lang]["asr_base"]["n"]
    )
    mean_edited = sum(
        table[lang]["asr_edited"]["rate"] for lang in langs if lang != "en" and table[lang]["asr_edited"]["n"]
    )
    n_langs = sum(1 for lang in langs if lang != "en" and table[lang]["asr_base"]["n"])
    newly = sum(base[k] == "refusal" and edited[k] == "compliance" for k in harmful_all)
    broken = sum(base[k] != "invalid" and edited[k] == "invalid" for k in base)
    return {
        "by_lang": table,
        "mean_asr_non_english_base": mean_base / n_langs,
        "mean_asr_non_english_edited": mean_edited / n_langs,
        "mean_asr_relative_change": (mean_edited - mean_base) / mean_base if mean_base else None,
        "over_refusal_pooled_base": rate(sum(base[k] == "refusal" for k in harmless_all), len(harmless_all)),
        "over_refusal_pooled_edited": rate(sum(edited[k] == "refusal" for k in harmless_all), len(harmless_all)),
        "mcnemar_asr_non_english": se.mcnemar(
            [base[k] == "compliance" for k in others], [edited[k] == "compliance" for k in others]
        ),
        "mcnemar_over_refusal": se.mcnemar(
            [base[k] == "refusal" for k in harmless_all], [edited[k] == "refusal" for k in harmless_all]
        ),
        "newly_answered": newly,
        "newly_answered_share": newly / len(harmful_all),
        "harmful_prompts": len(harmful_all),
        "harmless_prompts": len(harmless_all),
        "newly_invalid": broken,
        "invalid_base": sum(v == "invalid" for v in base.values()),
        "invalid_edited": sum(v == "invalid" for v in edited.values()),
    }


def edit_settings(name: str, study: Path, recommended: int) -> dict[str, Any] | None:
    """apply's settings for an edit: ``tuned`` (chosen.toml), ``tuned@A+B`` (chosen.toml at layers A, B one
    after another), ``trial-N`` (trial N of the study) or a baseline (the study's anchors and fixed settings
    with the baseline's on top)."""
    if name == "tuned" or name.startswith("tuned@"):
        chosen = study / "chosen.toml"
        layers = {"layer": name.removeprefix("tuned@").replace("+", ",")} if "@" in name else {}
        return {"config": chosen, **layers} if chosen.is_file() else None
    if name.startswith("trial-"):
        return se.study_apply_settings(study, int(name.removeprefix("trial-")))
    baseline = {
        key: str(recommended) if value == "RECOMMENDED" else value for key, value in BASELINES[name].items()
    }
    return {**se.study_apply_settings(study), **baseline}


# The test config's harmless sources under --harmless-limit (results written before test_harmless existed
# were measured so too).
HARMLESS_BY_LIMIT = (
    "MultiQ gpt-1..50, lmsys-1..40 plus PolyRefuse harmless val cut to the first prompts per language in source "
    "order"
)


def test_harmless(each: int | None, skip: int) -> tuple[dict[str, Any], str]:
    """eval's harmless settings and their description: the test config's sources cut by --harmless-limit, or
    ``each`` prompts per language from each of MultiQ gpt, MultiQ lmsys and PolyRefuse harmless val (where a
    language has them). The limit takes each language's first prompts in source order, so the config's
    sources alone give MultiQ gpt ids only."""
    if each is None:
        return {}, HARMLESS_BY_LIMIT
    first, last = 1 + skip, skip + each
    specs = [
        f"data/multiq/multiq.jsonl@gpt-{first}..{last},lmsys-{first}..{last}",
        f"data/polyrefuse/harmless_val_translated_*.json@{first - 1}-{last - 1}",
        f"data/polyrefuse/harmless_val_en_sample.json@{first - 1}-{last - 1}",
    ]
    return {"harmless": specs, "harmless_limit": 3 * each}, (
        f"MultiQ gpt-{first}..{last} and lmsys-{first}..{last} plus PolyRefuse harmless val ids {first - 1}-{last - 1} "
        "(where the language has them)"
    )


def edit_names(edits: str, pareto: dict[str, Any]) -> list[str]:
    """``--edits`` with ``front`` expanded to trial-N for every trial on the study's front (the chosen one is
    ``tuned`` when that is listed too)."""
    names: list[str] = []
    for name in edits.split(","):
        if name != "front":
            names.append(name)
            continue
        skip = pareto["chosen"] if "tuned" in edits.split(",") else None
        names += [f"trial-{number}" for number in pareto["front"] if number != skip]
    return list(dict.fromkeys(names))


def agreement(results: dict[str, Any]) -> dict[str, Any]:
    """Does the dev order of the evaluated trials hold on test? Spearman's rank correlation and the share of
    pairs ordered alike, for attack success and for the over-refusal rise."""
    from scipy.stats import spearmanr

    rows = [r for r in results.values() if "dev" in r]
    out: dict[str, Any] = {"trials": len(rows)}
    if len(rows) < 3:
        return out
    test_rise = [
        r["test"]["over_refusal_pooled_edited"]["rate"] - r["test"]["over_refusal_pooled_base"]["rate"]
        for r in rows
    ]
    pairs = {
        "attack_success": (
            [r["dev"]["attack_success"] for r in rows],
            [r["test"]["mean_asr_non_english_edited"] for r in rows],
        ),
        "over_refusal": ([r["dev"]["over_refusal"] for r in rows], test_rise),
    }
    for name, (dev, test) in pairs.items():
        ordered = [
            (dev[i] - dev[j]) * (test[i] - test[j]) > 0
            for i in range(len(rows))
            for j in range(i + 1, len(rows))
            if dev[i] != dev[j] and test[i] != test[j]
        ]
        rho = spearmanr(dev, test).statistic
        out[name] = {
            "spearman": None if rho != rho else float(rho),
            "pairs_ordered_alike": sum(ordered),
            "pairs_compared": len(ordered),
        }
    return out


def p_value(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def pct(rate: dict[str, Any]) -> str:
    low, high = rate["ci95"]
    return f"{100 * rate['rate']:.1f} [{100 * low:.0f}–{100 * high:.0f}]"


def test_slice(payload: dict[str, Any]) -> str:
    """``the first 40`` or ``40 after the first 40``: which test prompts of each language the run used."""
    limit, skip = payload["test_limit_per_language"], payload.get("test_skip_per_language", 0)
    return f"the first {limit}" if not skip else f"{limit} after the first {skip}"


def anchor_sources(settings: dict[str, Any]) -> str:
    """``multijail/MultiJail.csv@100-314, multiq/multiq.jsonl@gpt-51..100,lmsys-41..80``: the study's prompt
    sources, each by its folder and file name (and its harmless dev sources, with --dev-harmless)."""

    def names(specs: list[str]) -> str:
        return ", ".join("/".join(Path(spec).parts[-2:]) for spec in specs)

    text = names([*settings["harmful"], *settings["harmless"]])
    if settings.get("dev_harmless"):
        text += f"; harmless dev: {names(settings['dev_harmless'])}"
    return text


def harmful_ids_note(ids: str) -> str:
    """What a results page says of MultiJail ids other than the whole clean test (20-99)."""
    if ids == "20-99":
        return ""
    note = "The harmful prompts are exactly those ids; --test-skip applies to the harmless prompts. "
    if any(number < 20 for number in id_numbers(ids)):
        note = (
            "MultiJail ids 0-19 were read before the split was fixed: reported beside the clean test, not a clean "
            "test themselves. " + note
        )
    return note


def render(payload: dict[str, Any]) -> str:
    """The test-side comparison as Markdown (benchmarks/results/tune-study.md)."""
    study = payload["study"]
    lines = [
        "# Tune study on Qwen2.5-Coder-0.5B-Instruct",
        "",
        f"Written by `{payload.get('command', 'python benchmarks/tune_study.py')}` (with "
        f"`{payload.get('name', 'tune-study')}.json`). Everything the study chose came from "
        f"the anchor side ({anchor_sources(study['settings'])}); the table below is the test "
        + (
            f"side: the sources of {payload['test_config']}, "
            if payload.get("test_config")
            else f"side: MultiJail ids {payload.get('test_harmful_ids', '20-99')} and "
            f"{payload.get('test_harmless', HARMLESS_BY_LIMIT)}, "
        )
        + f"{test_slice(payload)} per language and class, 32-token greedy replies ({payload.get('eval_dtype', 'auto')} "
        "eval), keyword judge. "
        + ("" if payload.get("test_config") else harmful_ids_note(payload.get("test_harmful_ids", "20-99")))
        + "Rates in % with 95 % Wilson intervals; McNemar tests are exact and pooled over languages; newly answered = "
        "harmful test prompts the base model refused and the edited model answers.",
        "",
        f"Study: {study['study']['complete']} finished trials ({study['study']['pruned']} skipped, "
        f"{study['study']['failed']} failed) in {study['study']['seconds_this_run']:.0f} s of search (model load, "
        "anchors and the base model's dev replies not counted"
        + (f"; the whole command took {payload['seconds']['tune']:.0f} s" if "tune" in payload["seconds"] else "")
        + "); "
        f"dev: {study['dev']['harmful']} harmful and {study['dev']['harmless']} harmless prompts. Chosen trial: "
        f"{study['chosen']}; front: {', '.join(map(str, study['front']))}.",
        "",
        "| edit | params | non-English ASR base → edited | relative | McNemar p | over-refusal base → edited | "
        "McNemar p | newly answered | newly invalid | test KL |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, result in payload["results"].items():
        test, edit = result["test"], result["edit"]
        label = f"{name} ({edit['strategy']}@{','.join(map(str, edit['layers']))})"
        kl = result.get("test_kl_harmless")
        lines.append(
            f"| {label} | {edit['changed_parameters']} | {100 * test['mean_asr_non_english_base']:.1f} → "
            f"{100 * test['mean_asr_non_english_edited']:.1f} | {100 * (test['mean_asr_relative_change'] or 0):+.0f} % | "
            f"{p_value(test['mcnemar_asr_non_english']['p_value'])} | {pct(test['over_refusal_pooled_base'])} → "
            f"{pct(test['over_refusal_pooled_edited'])} | {p_value(test['mcnemar_over_refusal']['p_value'])} | "
            f"{test['newly_answered']}/{test['harmful_prompts']} | "
            f"{test.get('newly_invalid', '-')}/{test['harmful_prompts'] + test['harmless_prompts']} | "
            f"{'-' if kl is None else f'{kl:.4f}'} |"
        )
    lines += [
        "",
        "## Dev vs test (trials of the study)",
        "",
        f"Dev base: attack success {100 * study['base']['attack_success']:.1f} %. Over-refusal on dev is the rise "
        "over the base model, as on test.",
        "",
        "| edit | trial | dev ASR | test ASR | dev over-refusal rise | test over-refusal rise | dev newly answered | "
        "test newly answered |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in payload["results"].items():
        dev, test = result.get("dev"), result["test"]
        if dev is None:
            continue
        rise = test["over_refusal_pooled_edited"]["rate"] - test["over_refusal_pooled_base"]["rate"]
        lines.append(
            f"| {name} | {dev['trial']} | {100 * dev['attack_success']:.1f} | "
            f"{100 * test['mean_asr_non_english_edited']:.1f} | {100 * dev['over_refusal']:+.1f} | {100 * rise:+.1f} | "
            f"{dev['newly_answered']} | {test['newly_answered']} |"
        )
    agree = payload.get("dev_test_agreement", {})
    for name in ("attack_success", "over_refusal"):
        if name in agree:
            a = agree[name]
            rho = "undefined" if a["spearman"] is None else f"{a['spearman']:.2f}"
            lines += [
                "",
                f"Dev vs test order, {name.replace('_', ' ')} ({agree['trials']} trials): Spearman {rho}; "
                f"{a['pairs_ordered_alike']} of {a['pairs_compared']} pairs (ties left out) ordered alike.",
            ]
    for name, result in payload["results"].items():
        lines += [
            "",
            f"## {name}: per language (test)",
            "",
            "| lang | ASR base | ASR edited | newly answered | "
            "newly refused | over-refusal base | over-refusal edited |",
            "|---|---|---|---:|---:|---|---|",
        ]
        for lang, row in result["test"]["by_lang"].items():
            asr = (pct(row["asr_base"]), pct(row["asr_edited"])) if row["asr_base"]["n"] else ("-", "-")
            lines.append(
                f"| {lang} | {asr[0]} | {asr[1]} | {row['newly_answered']} | {row['newly_refused']} | "
                f"{pct(row['over_refusal_base'])} | {pct(row['over_refusal_edited'])} |"
            )
        if "parity" in result:
            lines += render_parity(name, result["parity"])
    return "\n".join(lines) + "\n"


def render_parity(name: str, block: dict[str, Any]) -> list[str]:
    """The halves, parity per language, over-refusal per harmless source and the reference language's change."""
    lines = [
        "",
        f"## {name}: the two halves of the clean test, parity with English, each harmless source",
        "",
        "| half | non-English ASR base → edited | relative | worst language | newly answered | McNemar p |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for half, row in block["halves"].items():
        lines.append(
            f"| {half} | {100 * row['mean_asr_non_english_base']:.1f} → {100 * row['mean_asr_non_english_edited']:.1f} "
            f"| {100 * (row['relative_change'] or 0):+.0f} % | {100 * row['worst_language_change']:+.1f} | "
            f"{100 * row['newly_answered_share']:.1f} % | {p_value(row['mcnemar']['p_value'])} |"
        )
    lines += [
        "",
        f"Parity with the base model's English verdicts (parallel prompts, both classes): mean "
        f"{100 * block['mean_parity_base']:.1f} → {100 * block['mean_parity_edited']:.1f} %. English: "
        f"{block['reference_refusals_gained']} refusals gained, {block['reference_refusals_lost']} lost of "
        f"{block['reference_prompts']} prompts; English harmless refusal "
        f"{pct(block['reference_harmless_refusal']['base'])} → {pct(block['reference_harmless_refusal']['edited'])}.",
        "",
        "| lang | pairs | parity base | parity edited | McNemar p |",
        "|---|---:|---|---|---:|",
    ]
    for lang, row in block["by_lang"].items():
        lines.append(
            f"| {lang} | {row['pairs']} | {pct(row['parity_base'])} | {pct(row['parity_edited'])} | "
            f"{p_value(row['mcnemar']['p_value'])} |"
        )
    lines += ["", "| harmless source | n | refused base | refused edited | McNemar p |", "|---|---:|---|---|---:|"]
    for group, row in block["over_refusal_by_source"].items():
        lines.append(
            f"| {group} | {row['n']} | {pct(row['base'])} | {pct(row['edited'])} | {p_value(row['mcnemar']['p_value'])} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--timeout", type=int, default=None, help="seconds after which the study starts no trial")
    parser.add_argument(
        "--tune-settings",
        default="{}",
        help="more settings for tune, as a JSON object of option fields (e.g. '{\"max_edit_layers\": 2}')",
    )
    parser.add_argument("--test-limit", type=int, default=24, help="test prompts per language and class")
    parser.add_argument(
        "--test-harmless-each",
        type=int,
        default=None,
        help="harmless test prompts per language from each source (MultiQ gpt, MultiQ lmsys, PolyRefuse val) "
        "instead of --test-limit of them in source order (which is MultiQ gpt only)",
    )
    parser.add_argument(
        "--test-skip", type=int, default=0, help="skip this many test prompts per language and class first"
    )
    parser.add_argument(
        "--test-harmful-ids",
        default=None,
        help="MultiJail ids of the harmful test prompts instead of 20-99 (e.g. 0-19, reported beside the clean "
        "test); --test-skip then applies to the harmless prompts only",
    )
    parser.add_argument(
        "--edits",
        default="tuned,paper,previous",
        help="edits to evaluate on the test side: tuned, tuned@A+B (the chosen settings at layers A, B), paper, "
        "defaults, previous, trial-N (trial N of the study), NAME=PATH (an edited checkpoint already written), front "
        "(every trial on the study's front); the first one's report holds the base model's replies",
    )
    parser.add_argument(
        "--runs", type=Path, default=RUNS, help="folder for the artifact, study, edits and reports"
    )
    parser.add_argument(
        "--dtype", default=None, help="eval's --dtype (tune and apply take theirs from the tune config)"
    )
    parser.add_argument("--name", default="tune-study", help="results file name in benchmarks/results/")
    parser.add_argument("--locate-config", type=Path, default=CONFIGS / "multijail-anchors-locate.toml")
    parser.add_argument("--tune-config", type=Path, default=CONFIGS / "multijail-anchors-tune.toml")
    parser.add_argument("--test-config", type=Path, default=CONFIGS / "multijail-test-eval.toml")
    args = parser.parse_args(argv)
    runs: Path = args.runs.resolve()
    need_shared_data()
    seconds: dict[str, float] = {}
    artifact = runs / "locate.safetensors"
    if not artifact.is_file():
        config = args.locate_config
        seconds["locate"] = step(
            f"locate {config.name}",
            se.locate,
            config,
            limit=64,
            harmless_limit=64,
            output=artifact,
        )
    study = runs / "tune"
    tune_settings = {"trials": args.trials, "timeout": args.timeout, **json.loads(args.tune_settings)}
    if not study.is_dir():
        config = args.tune_config
        seconds["tune"] = step(
            f"tune {config.name} {tune_settings}",
            se.tune,
            config,
            artifact=artifact,
            output=study,
            **tune_settings,
        )
    pareto = json.loads((study / "pareto.json").read_text())
    recommended = se.LocateArtifact.load(artifact).recommended_layer
    if recommended is None:
        raise SystemExit(f"{artifact} recommends no layer: the paper baseline has none to edit")
    results: dict[str, Any] = {}
    base_report: Path | None = None
    harmless_settings, harmless_description = test_harmless(args.test_harmless_each, args.test_skip)
    for entry in edit_names(args.edits, pareto):
        name, _, written = entry.partition("=")
        edited = (ROOT / written).resolve() if written else runs / f"edit-{name}"
        if written and not edited.is_dir():
            raise SystemExit(f"--edits {entry}: {edited} is not an edited checkpoint folder")
        if not edited.is_dir():
            settings = edit_settings(name, study, recommended)
            if settings is None:
                print(f"{name}: no such edit in this study (no trial qualified?)", flush=True)
                continue
            seconds[f"apply-{name}"] = step(f"apply {name}", se.apply_edit, output=edited, **settings)
        # The first edit's report holds the base model's replies too; the others are paired with them.
        report = runs / (
            f"test-{name}"
            + (f"-skip{args.test_skip}" if args.test_skip else "")
            + (f"-ids{args.test_harmful_ids}" if args.test_harmful_ids else "")
            + (f"-each{args.test_harmless_each}" if args.test_harmless_each else "")
        )
        base_report = base_report or report
        if not report.is_dir():
            test: dict[str, Any] = {
                "model": edited,
                "base": MODEL if report == base_report else None,
                "limit": args.test_limit,
                "harmless_limit": args.test_limit,
                **harmless_settings,
                "output": report,
            }
            if args.test_skip:
                test["skip" if not args.test_harmful_ids else "harmless_skip"] = args.test_skip
                if not harmless_settings:
                    test["harmless_skip"] = args.test_skip
            if args.test_harmful_ids:
                test["harmful"] = [f"data/multijail/MultiJail.csv@{args.test_harmful_ids}"]
            if args.dtype:
                test["dtype"] = args.dtype
            config = args.test_config
            seconds[f"eval-{name}"] = step(f"eval {name}", se.evaluate, config, **test)
        manifest = json.loads((edited / "sparse_edit" / "manifest.json").read_text())
        results[name] = {
            "edit": {k: manifest[k] for k in ("strategy", "layers", "changed_parameters", "changed_fraction")},
            "dev_kl_harmless": manifest["diagnostics"].get("kl_harmless"),
            "test": paired(report, base_report),
            "parity": parity_block(report, base_report),
        }
        if written:
            results[name]["checkpoint"] = written  # another study's edit: its dev outcome is in that study
        number = None  # the study trial behind the edit, whose dev outcome goes beside the test
        if not written:
            number = pareto["chosen"] if name == "tuned" else int(name[6:]) if name.startswith("trial-") else None
        if number is not None:
            (trial,) = [t for t in pareto["trials"] if t["number"] == number]
            results[name]["dev"] = {"trial": number, **trial["outcome"]}
        if report == base_report:
            results[name]["test_kl_harmless"] = json.loads((report / "report.json").read_text())["summary"][
                "kl_harmless"
            ]
    shutil.copyfile(study / "pareto.md", RESULTS / f"{args.name}-pareto.md")
    path = save(
        args.name,
        {
            "model": MODEL,
            "eval_dtype": args.dtype or "auto",
            "name": args.name,
            "command": " ".join(["python benchmarks/tune_study.py", *(sys.argv[1:] if argv is None else argv)]),
            "runs": str(runs.relative_to(ROOT)) if runs.is_relative_to(ROOT) else str(runs),
            "seconds": seconds,
            "study": {
                k: pareto[k] for k in ("dev", "base", "front", "chosen", "study", "settings", "choice_rule")
            },
            "trials": pareto["trials"],
            "test_limit_per_language": args.test_limit,
            "test_skip_per_language": args.test_skip,
            "test_harmful_ids": args.test_harmful_ids or "20-99",
            "test_harmless": harmless_description,
            # Another test config names its own prompts (the default one is described by the fields above).
            "test_config": None
            if args.test_config == CONFIGS / "multijail-test-eval.toml"
            else args.test_config.name,
            "results": results,
            "dev_test_agreement": agreement(results),
        },
    )
    (RESULTS / f"{args.name}.md").write_text(render(json.loads(path.read_text())))
    print(f"wrote {path} and {args.name}.md")


if __name__ == "__main__":
    main()

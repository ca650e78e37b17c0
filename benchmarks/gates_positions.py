"""Where a detector edit's written neurons push: the last prompt token, the earlier prompt tokens, the reply.

A gate is screened on the prompts' last tokens, but every token passes through the neurons ``apply``
wrote. This runs the edited model once over each harmful prompt of an ``eval --base`` report followed by
the edited model's own reply (teacher-forced: the reply the judge read) and measures, at every position,
the norm of what the written neurons add to the MLP output. Prompts are grouped by how the edit moved
their verdict (base refused / answered -> edited refused / answered), so the push on the replies that
changed is seen beside the push on those that did not.

    python benchmarks/gates_positions.py --report runs/gates-end-1220-eval --edited runs/gates-end-1220-g32

Per group and edited layer: the mean push at the last prompt token, the mean of the largest push over the
earlier prompt tokens and over the reply tokens, the mean push over the reply tokens, and the share of
reply tokens pushed at least half as hard as the pair's full push (the 95th percentile of the last-token
push over every sampled prompt that fires).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import torch
from runner import ROOT, RUNS, Skipped, replies_by_prompt, save

GROUPS = ("refused -> answered", "refused -> refused", "answered -> refused", "answered -> answered")


def _shown(path: Path) -> str:
    """``path`` as the command line would name it from the repository root."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def _groups(report: Path) -> dict[str, list[dict[str, Any]]]:
    """Harmful prompts with both replies, by how the edit moved the verdict; each entry is the edited row."""
    groups: dict[str, list[dict[str, Any]]] = {name: [] for name in GROUPS}
    for (label, _lang, _id), pair in replies_by_prompt(report).items():
        if label == "harmful" and "base" in pair and "edited" in pair:
            before = "refused" if pair["base"]["verdict"] == "refusal" else "answered"
            after = "refused" if pair["edited"]["verdict"] == "refusal" else "answered"
            groups[f"{before} -> {after}"].append(pair["edited"])
    return groups


def _written_neurons(edited: Path) -> dict[int, list[int]]:
    manifest = json.loads((edited / "sparse_edit" / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("strategy") != "detector":
        raise SystemExit(f"{edited}: not a detector edit (its manifest names {manifest.get('strategy')!r})")
    neurons: dict[int, list[int]] = {}
    for entry in manifest["diagnostics"]["per_layer"]:
        written = entry["repurposed_neuron"]
        neurons[int(entry["layer"])] = written if isinstance(written, list) else [written]
    return neurons


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--report",
        type=Path,
        default=RUNS / "gates-end-1220-eval",
        help="an `eval --base` output folder of the edit (replies.jsonl)",
    )
    parser.add_argument(
        "--edited",
        type=Path,
        default=RUNS / "gates-end-1220-g32",
        help="the edited checkpoint that report measured",
    )
    parser.add_argument("--per-group", type=int, default=30, help="prompts sampled per group (seeded)")
    parser.add_argument("--name", default="gates-positions")
    args = parser.parse_args(argv)
    if not (args.report / "replies.jsonl").is_file() or not args.edited.is_dir():
        raise Skipped(
            f"needs {args.report} (an `eval --base` of a detector edit) and {args.edited} (the edit): "
            "docs/results/gates.md gives the commands"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    neurons = _written_neurons(args.edited)
    groups = _groups(args.report)
    tokenizer = AutoTokenizer.from_pretrained(args.edited)
    model = AutoModelForCausalLM.from_pretrained(args.edited, dtype=torch.bfloat16).eval()
    layers = model.model.layers
    captured: dict[int, torch.Tensor] = {}
    for layer in neurons:

        def keep(_module: Any, inputs: tuple[torch.Tensor, ...], layer: int = layer) -> None:
            captured[layer] = inputs[0][0].float()

        layers[layer].mlp.down_proj.register_forward_pre_hook(keep)
    columns = {
        layer: layers[layer].mlp.down_proj.weight[:, ids].detach().float() for layer, ids in neurons.items()
    }

    rng = random.Random(0)
    pushes: dict[str, list[dict[int, tuple[float, float, torch.Tensor]]]] = {}
    for name, members in groups.items():
        chosen = sorted(members, key=lambda row: (row["id"], row["lang"]))
        rng.shuffle(chosen)
        pushes[name] = []
        for row in chosen[: args.per_group]:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": row["prompt"]}], tokenize=False, add_generation_prompt=True
            )
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            reply_ids = tokenizer(row["reply"], add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                model(torch.tensor([prompt_ids + reply_ids]))
            end = len(prompt_ids) - 1
            per_layer = {}
            for layer, ids in neurons.items():
                push = (captured[layer][:, ids] @ columns[layer].T).norm(dim=1)
                per_layer[layer] = (float(push[end]), float(push[:end].max()), push[end + 1 :])
            pushes[name].append(per_layer)

    result: dict[str, Any] = {"report": _shown(args.report), "edited": _shown(args.edited), "groups": {}}
    for layer in neurons:
        ends = torch.tensor([p[layer][0] for group in pushes.values() for p in group])
        full = float(torch.quantile(ends[ends > 1e-3], 0.95)) if bool((ends > 1e-3).any()) else 0.0
        result.setdefault("full_push", {})[str(layer)] = full
        for name, group in pushes.items():
            if not group:
                continue
            replies = [p[layer][2] for p in group if len(p[layer][2])]
            entry = {
                "prompts": len(group),
                "last_prompt_token": sum(p[layer][0] for p in group) / len(group),
                "earlier_prompt_tokens_max": sum(p[layer][1] for p in group) / len(group),
                "reply_tokens_max": sum(float(r.max()) for r in replies) / max(len(replies), 1),
                "reply_tokens_mean": sum(float(r.mean()) for r in replies) / max(len(replies), 1),
                "reply_tokens_pushed_half": (
                    sum(float((r >= 0.5 * full).double().mean()) for r in replies) / max(len(replies), 1)
                    if full > 0
                    else 0.0
                ),
            }
            result["groups"].setdefault(name, {})[str(layer)] = entry
    for name, by_layer in result["groups"].items():
        for layer, entry in by_layer.items():
            figures = ", ".join(f"{key} {value:.3g}" for key, value in entry.items() if key != "prompts")
            print(f"{name:<22} layer {layer}: {entry['prompts']} prompts; {figures}")
    save(args.name, result)


if __name__ == "__main__":
    main()
    print(f"results in {ROOT / 'benchmarks' / 'results'}")

"""Prompt files, planted models and CLI helpers for tests."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from typer.testing import CliRunner

from sparse_edit.cli import app
from sparse_edit.io.checkpoint import Checkpoint

WORDS = {
    "en": [
        "how",
        "do",
        "I",
        "make",
        "a",
        "cake",
        "bread",
        "story",
        "poem",
        "list",
        "city",
        "river",
        "plan",
        "water",
        "light",
    ],
    "th": ["ฉัน", "จะ", "ทำ", "เค้ก", "ขนม", "เรื่อง", "บทกวี", "เมือง", "แม่น้ำ", "น้ำ", "แสง"],
    "yo": ["bawo", "ni", "mo", "se", "le", "ṣe", "akara", "itan", "ewi", "ilu", "odo", "omi", "imole"],
}


def random_texts(lang: str, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[lang]) for _ in range(rng.randint(3, 9))) for _ in range(count)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def parallel_prompt_files(
    folder: Path, langs=("en", "th", "yo"), count: int = 12, suffix: tuple[str, str] = ("", "")
):
    """harmful.jsonl / harmless.jsonl with the same ids in every language."""
    harmful, harmless = [], []
    for lang in langs:
        texts = random_texts(lang, count, seed=1)
        others = random_texts(lang, count, seed=2)
        harmful += [{"id": i, "lang": lang, "text": t + suffix[0]} for i, t in enumerate(texts)]
        harmless += [{"id": i, "lang": lang, "text": t + suffix[1]} for i, t in enumerate(others)]
    return write_jsonl(folder / "harmful.jsonl", harmful), write_jsonl(folder / "harmless.jsonl", harmless)


PLANTED = [3, 17, 42]


def planted_llama(folder: Path, tiny_models) -> Path:
    """A one-layer Llama where neurons PLANTED fire only on <|marker|> and nothing mixes positions.

    Residual dimension 0 is reserved for the marker; <|system|> has an all-zero embedding and is
    the harmless stand-in at the same position, so every other neuron sees identical inputs.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_models("llama", layers=1)
    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    marker = tokenizer.convert_tokens_to_ids("<|marker|>")
    neutral = tokenizer.convert_tokens_to_ids("<|system|>")
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:, 0] = 0
        embed[marker] = 0
        embed[marker, 0] = 1
        embed[neutral] = 0
        mlp = model.model.layers[0].mlp
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        mlp.gate_proj.weight[:, 0] = 0
        mlp.up_proj.weight[:, 0] = 0
        for j in PLANTED:
            mlp.gate_proj.weight[j] = 0
            mlp.up_proj.weight[j] = 0
            mlp.gate_proj.weight[j, 0] = 5
            mlp.up_proj.weight[j, 0] = 5
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def planted_prompts(folder: Path, langs=("en", "th"), count: int = 16) -> tuple[Path, Path]:
    harmful, harmless = [], []
    for lang in langs:
        for i, text in enumerate(random_texts(lang, count, seed=3)):
            harmful.append({"id": i, "lang": lang, "text": text + "<|marker|>"})
            harmless.append({"id": i, "lang": lang, "text": text + "<|system|>"})
    return write_jsonl(folder / "harmful.jsonl", harmful), write_jsonl(folder / "harmless.jsonl", harmless)


runner = CliRunner()


def run_cli(*args: str, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def apply_args(artifact: Path, output: Path, *extra: str) -> list[str]:
    return [
        "apply",
        "--artifact",
        str(artifact),
        "-o",
        str(output),
        "--layer",
        "1",
        "--gamma",
        "0.01",
        "--lam",
        "1e-3",
        "--device",
        "cpu",
        "-q",
        # Most mechanics tests pin the paper strategy; tests of another strategy name theirs.
        *([] if "--strategy" in extra else ["--strategy", "paper"]),
        *extra,
    ]


def locate_and_apply(root: Path) -> None:
    """Beside the model at ``root/base``: prompt files, ``art.safetensors`` and an ``edited`` folder."""
    harmful, harmless = parallel_prompt_files(root, count=10)
    common = ["--harmful", harmful, "--harmless", harmless, "--device", "cpu", "-q"]
    run_cli("locate", "--model", root / "base", *common, "--tau-stat", "0.3", "-o", root / "art.safetensors")
    run_cli(*apply_args(root / "art.safetensors", root / "edited"))


def changed_rows(base: Path, edited: Path) -> dict[str, torch.Tensor]:
    """Per changed tensor, a boolean mask of changed entries."""
    a, b = Checkpoint.open(base), Checkpoint.open(edited)
    return {
        n: a.load_tensor(n) != b.load_tensor(n)
        for n in a.tensors
        if not torch.equal(a.load_tensor(n), b.load_tensor(n))
    }


# ---- the bad-input promise, checked on the real command line ----------------------------------

CLI = [sys.executable, "-c", "from sparse_edit.cli import main; main()"]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its content hash (folders and links by kind)."""
    entries = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = "link:" + os.readlink(path)
        elif path.is_dir():
            entries[key] = "dir"
        else:
            entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def refused(
    root: Path, *args: object, code: int = 2, mentions: tuple[str, ...] = (), file_limit: int | None = None
):
    """Run the CLI in ``root``; assert the promise above and return the error line."""
    before = snapshot(root)

    def limit_file_size() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    env = {**os.environ, "SPARSE_EDIT_CACHE": str(root / ".cache")}
    result = subprocess.run(
        [*CLI, *map(str, args)],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    prefix = "error:" if code == 2 else "failed:"
    lines = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, result.stderr
    for text in mentions:
        assert text in lines[0], lines[0]
    # The conversion cache of a .gguf input may fill; it is not an input.
    before, after = (
        {k: v for k, v in state.items() if not k.startswith(".cache")} for state in (before, snapshot(root))
    )
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
    return lines[0]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _carries(value: Any, options: Any) -> bool:
    if value is options:
        return True
    fields = getattr(value, "__dict__", None)
    return isinstance(fields, dict) and any(item is options for item in fields.values())


def options_reach(run: Any, options: Any) -> dict[str, Any]:
    """Run ``run()`` and follow ``options`` through the package's calls (``benchmarks/options_reach.py`` says how
    they are counted): the modules (rooms) it enters, climbs back up and returns to a room it had left."""
    stack: list[tuple[int, str]] = []  # (frame id, module) of the carrying calls still running
    rooms: list[str] = []
    climbs: list[str] = []
    returns: list[str] = []

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event == "return" and stack and stack[-1][0] == id(frame):
            stack.pop()
            return
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("sparse_edit") or module == "sparse_edit.api":
            return
        code = frame.f_code
        arguments = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if arguments[:1] == ("self",) and frame.f_locals.get("self") is options:
            return  # the object's own method: it is at home, not carried anywhere
        if not any(_carries(frame.f_locals.get(name), options) for name in arguments):
            return
        above = [room for _, room in stack[:-1]]
        caller = stack[-1][1] if stack else None
        if module != caller:
            if module in above:
                climbs.append(f"{caller} -> {module}.{code.co_name}")
            elif module in rooms:
                returns.append(f"{caller} -> {module}.{code.co_name}")
        if module not in rooms:
            rooms.append(module)
        stack.append((id(frame), module))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return {
        "rooms_entered": len(rooms),
        "climbs_back_up": len(climbs),
        "returns_to_a_room_left": len(returns),
        "rooms": rooms,
        "climbs": climbs,
        "returns": returns,
    }

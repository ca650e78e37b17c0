"""Writing an edited checkpoint: sparse-edit's per-tensor write vs load + edit + save_pretrained, same run.

Builds a sharded float32 Llama checkpoint of about 1 GB from a config (no download), locates and
applies a `paper` edit on it (not timed), then writes the base checkpoint back from the edited one
both ways, each in its own process: ``se.revert`` (reads the recorded delta, streams the touched
shards) against the naive route (load the whole edited model, subtract the same rows, save_pretrained).
Prints time and peak-RSS ratios; RSS above each process's own start (imports) is reported too,
since that part is what scales with the model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from runner import RUNS, run_child, save

BUILD = """
import json, torch
from transformers import LlamaConfig, AutoModelForCausalLM
from sparse_edit.testing import byte_tokenizer
torch.manual_seed(0)
config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=14,
                     num_attention_heads=16, num_key_value_heads=4)
model = AutoModelForCausalLM.from_config(config)
model.save_pretrained(r"{path}", max_shard_size="200MB")
byte_tokenizer().save_pretrained(r"{path}")
"""
PROMPTS = """
import json
langs = {{"en": "how do I make {{}}", "th": "ฉันจะทำ {{}}"}}
with open(r"{path}", "w", encoding="utf-8") as out:
    for i in range(8):
        for lang, text in langs.items():
            for label in ("harmful", "harmless"):
                out.write(json.dumps({{"id": f"{{label}}-{{i}}", "lang": lang, "label": label,
                                      "text": text.format(f"{{label}} thing {{i}}")}}) + "\\n")
"""
EDIT = """
import sparse_edit as se
common = dict(harmful=[r"{prompts}"], harmless=[r"{prompts}"], device="cpu")
se.locate(model=r"{src}", output=r"{artifact}", tau_stat=0.3, **common)
se.apply_edit(artifact=r"{artifact}", output=r"{edited}", strategy=["paper"], layer="7", gamma=0.01)
"""

NAIVE_SETUP = "import torch\nfrom transformers import AutoModelForCausalLM\nfrom safetensors import safe_open"
OURS_SETUP = "import sparse_edit as se"
OURS_BODY = 'se.revert(r"{edited}", r"{dst}")'


def main(argv: list[str] | None = None) -> None:
    # On the project disk (not /tmp, which may be a different filesystem): both routes write here.
    RUNS.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-write-", dir=RUNS))
    try:
        src, edited, prompts = root / "model", root / "edited", root / "prompts.jsonl"
        run_child(BUILD.format(path=src), "pass")
        run_child(PROMPTS.format(path=prompts), "pass")
        run_child(EDIT.format(src=src, prompts=prompts, artifact=root / "loc.safetensors", edited=edited), "pass")
        size_mb = sum(p.stat().st_size for p in src.glob("*.safetensors")) / 2**20
        naive = run_child(NAIVE_SETUP, naive_body(src, edited, root / "naive"))
        ours = run_child(OURS_SETUP, OURS_BODY.format(edited=edited, dst=root / "ours"))
        result = {
            "checkpoint_mb": round(size_mb, 1),
            "shards": len(list(src.glob("*.safetensors"))),
            "naive": naive,
            "sparse_edit": ours,
            "speedup": naive["seconds"] / ours["seconds"],
            "peak_rss_ratio": ours["rss_peak_mb"] / naive["rss_peak_mb"],
            "peak_rss_above_start_ratio": (ours["rss_peak_mb"] - ours["rss_start_mb"])
            / max(naive["rss_peak_mb"] - naive["rss_start_mb"], 1e-9),
        }
        save("write", result)
        print(f"checkpoint {size_mb:.0f} MB in {result['shards']} shards")
        print(f"naive load+edit+save_pretrained: {naive['seconds']:.2f} s, peak RSS {naive['rss_peak_mb']:.0f} MB")
        print(f"sparse-edit revert:              {ours['seconds']:.2f} s, peak RSS {ours['rss_peak_mb']:.0f} MB")
        print(
            f"speedup x{result['speedup']:.1f}; peak RSS ratio {result['peak_rss_ratio']:.3f} "
            f"(above process start: {result['peak_rss_above_start_ratio']:.3f})"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def naive_body(src: Path, edited: Path, dst: Path) -> str:
    """Load the edited model whole, put the edited tensors' base values back, save_pretrained."""
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    manifest = json.loads((edited / "sparse_edit" / "manifest.json").read_text())
    names = sorted({edit["tensor"] for edit in manifest["edits"]})
    shards = {name: str(src / index[name]) for name in names}
    return (
        f"model = AutoModelForCausalLM.from_pretrained(r'{edited}', dtype=torch.float32)\n"
        "state = model.state_dict()\n"
        "with torch.no_grad():\n"
        f"    for name, shard in {shards!r}.items():\n"
        "        with safe_open(shard, 'pt') as f:\n"
        "            state[name].copy_(f.get_tensor(name))\n"
        f"model.save_pretrained(r'{dst}', max_shard_size='200MB')\n"
    )


if __name__ == "__main__":
    main()

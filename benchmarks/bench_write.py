"""apply's write step vs the naive route (load the whole model, edit, save_pretrained), same run.

Builds a sharded float32 checkpoint of about 1 GB from a config (no download), then edits the
same rows of one tensor both ways, each in its own process. Prints time and peak-RSS ratios;
RSS above the process's own start (imports) is reported too, since that part is what scales
with the model.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from common import ROOT, run_child, save

BUILD = """
import torch
from transformers import LlamaConfig, AutoModelForCausalLM
from sparse_edit.testing import byte_tokenizer
torch.manual_seed(0)
config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=14,
                     num_attention_heads=16, num_key_value_heads=4)
model = AutoModelForCausalLM.from_config(config)
model.save_pretrained(r"{path}", max_shard_size="200MB")
byte_tokenizer().save_pretrained(r"{path}")
"""

NAIVE_SETUP = "import torch\nfrom transformers import AutoModelForCausalLM"
NAIVE_BODY = """
model = AutoModelForCausalLM.from_pretrained(r"{src}", dtype=torch.float32)
with torch.no_grad():
    model.model.layers[7].mlp.gate_proj.weight[:256] += 0.01
model.save_pretrained(r"{dst}", max_shard_size="200MB")
"""
OURS_SETUP = "import torch\nfrom sparse_edit.io.checkpoint import Checkpoint\nfrom sparse_edit.io.writer import write_checkpoint"
OURS_BODY = """
ckpt = Checkpoint.open(r"{src}")
name = "model.layers.7.mlp.gate_proj.weight"
tensor = ckpt.load_tensor(name).clone()
tensor[:256] += 0.01
write_checkpoint(ckpt, r"{dst}", {{name: tensor}}, command="apply")
"""


def main() -> None:
    # On the project disk (not /tmp, which may be a different filesystem): both routes write here.
    (ROOT / "runs").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-write-", dir=ROOT / "runs"))
    try:
        src = root / "model"
        run_child(BUILD.format(path=src), "pass")
        size_mb = sum(p.stat().st_size for p in src.glob("*.safetensors")) / 2**20
        naive = run_child(NAIVE_SETUP, NAIVE_BODY.format(src=src, dst=root / "naive"))
        ours = run_child(OURS_SETUP, OURS_BODY.format(src=src, dst=root / "ours"))
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
        print(f"sparse-edit write_checkpoint:    {ours['seconds']:.2f} s, peak RSS {ours['rss_peak_mb']:.0f} MB")
        print(
            f"speedup x{result['speedup']:.1f}; peak RSS ratio {result['peak_rss_ratio']:.3f} "
            f"(above process start: {result['peak_rss_above_start_ratio']:.3f})"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

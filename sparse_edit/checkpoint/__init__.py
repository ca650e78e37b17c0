"""Reading and surgically rewriting Hugging Face safetensors checkpoints."""

from sparse_edit.checkpoint.reader import Checkpoint, TensorInfo
from sparse_edit.checkpoint.writer import write_checkpoint

__all__ = ["Checkpoint", "TensorInfo", "write_checkpoint"]

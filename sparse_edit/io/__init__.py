"""Reading and writing files: checkpoints, staged outputs, GGUF and pinned offline models."""

"""Loading a model, batching prompts, hooks, features and generation."""

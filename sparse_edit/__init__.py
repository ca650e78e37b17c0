"""sparse-edit: closed-form sparse weight edits that carry refusal behaviour across languages."""

__version__ = "0.1.0"

"""``sparse-edit eval``: replies, judgements, statistics, gates and the report."""

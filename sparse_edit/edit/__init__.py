"""``sparse-edit apply``, ``verify`` and ``revert``: the closed-form edit and the folder it writes."""

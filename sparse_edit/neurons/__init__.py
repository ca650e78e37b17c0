"""Safety neurons: activation statistics, scores and sets per language and layer (``sparse-edit locate``), and the artifact that holds them."""

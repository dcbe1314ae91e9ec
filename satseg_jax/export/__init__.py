"""Exported models: ``satseg export`` (exporters: SavedModel, StableHLO) and the
JAX-free SavedModel predictor behind ``satseg predict --model`` (serving)."""

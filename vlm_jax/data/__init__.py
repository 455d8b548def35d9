"""Datasets, tokenizers and input pipelines (procedural shapes scenes via tfds + grain)."""

"""Evaluators: pure functions from model outputs (embeddings, decoded texts) to named scores."""

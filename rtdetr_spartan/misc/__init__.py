"""Distributed helpers, logging, checkpoints and meters."""

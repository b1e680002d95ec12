"""Importers: the authors' released checkpoints to this product's artifacts."""

"""Procedural image generators (fundus, lung CT, endoscopy) with exact ground truth."""

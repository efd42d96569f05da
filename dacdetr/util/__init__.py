"""Utilities for DAC-DETR: box geometry (``box_ops``) and misc helpers (``misc``)."""

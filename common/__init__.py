"""Shared core of layerzoo: registry, data, engine, checkpoints, logging, distributed, FLOPs."""

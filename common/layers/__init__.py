"""Layers shared by the papers (each paper imports them from here; no paper imports another).

Import the submodules directly, e.g. ``from common.layers.attention import SEModule``.
"""

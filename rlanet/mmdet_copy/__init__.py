"""Files to copy into an OpenMMLab checkout (``mmdet/models/backbones/``), the official way of adding a backbone;
each imports its model from this package (:mod:`rlanet.mmdet`). Nothing here is imported by layerzoo itself."""

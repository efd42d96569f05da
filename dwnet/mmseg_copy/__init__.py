"""Files to copy into an OpenMMLab checkout (``mmseg/models/backbones/``), the official way of adding a backbone;
each imports its model from this package (:mod:`dwnet.mmseg`). Nothing here is imported by layerzoo itself."""

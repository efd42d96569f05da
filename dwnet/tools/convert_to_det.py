"""Convert a DWNet ImageNet checkpoint (the released ``dwnet_tiny_224.pth``, ``dynamic_dwnet_base_224.pth``,
...) into a checkpoint of the detection / segmentation backbone ``DWNet``.

    python -m dwnet.tools.convert_to_det dwnet_tiny_224.pth pretrained/dwnet_tiny_det.pth --arch tiny

The final LayerNorm ``norm`` and the classifier ``head`` are dropped; the backbone's per-output BatchNorms
``norm0-3`` have no counterpart and keep BatchNorm's defaults, as with the official loader. The report lists
them; the output (``{'state_dict', 'meta'}``) is what ``init_cfg=dict(type='Pretrained', checkpoint=...)`` or
``pretrained=...`` reads. Status 2 with one message on a bad input."""
import sys

from common.backbone import converter_main

ARCHS = {"tiny": "DWNet-T (96, 2-2-6-2)", "base": "DWNet-B (128, 2-2-18-2)",
         "dynamic_tiny": "D-DWNet-T", "dynamic_base": "D-DWNet-B"}


def build(arch):
    import dwnet

    size = dict(embed_dim=96, depths=[2, 2, 6, 2]) if arch.endswith("tiny") else dict(embed_dim=128,
                                                                                    depths=[2, 2, 18, 2])
    return dwnet.create_backbone("DWNet", dynamic=arch.startswith("dynamic"), **size)


def main(argv=None):
    return converter_main(argv, "python -m dwnet.tools.convert_to_det", __doc__.split("\n\n")[0], ARCHS, build)


if __name__ == "__main__":
    sys.exit(main())

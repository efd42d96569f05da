"""Convert an ImageNet DLA-L checkpoint (``resnet50_dla_l`` / ``resnet101_dla_l``, e.g. the official
``r50_dla.pth.tar``) into a checkpoint of the detection backbone ``ResNet_dlal``.

    python -m dla.tools.convert_to_det r50_dla.pth.tar pretrained/r50_dla_det.pth --arch r50

``extict`` is renamed ``excite`` (the same depth-wise conv), ``fc`` is dropped; the DSU tensors cannot be
carried over (bottleneck C // 16 in the ImageNet model, C // 20 in the detection backbone) and keep the
backbone's init. The report lists every key that was not carried over and why; the output
(``{'state_dict', 'meta'}``) is what ``init_cfg=dict(type='Pretrained', checkpoint=...)`` or
``pretrained=...`` reads. Status 2 with one message on a bad input."""
import sys

from common.backbone import converter_main

ARCHS = {"r50": "ResNet-50 DLA-L (layers 3-4-6-3)", "r101": "ResNet-101 DLA-L (layers 3-4-23-3)"}
_LAYERS = {"r50": [3, 4, 6, 3], "r101": [3, 4, 23, 3]}


def build(arch):
    import dla

    return dla.create_backbone("ResNet_dlal", layers=_LAYERS[arch])


def main(argv=None):
    return converter_main(argv, "python -m dla.tools.convert_to_det", __doc__.split("\n\n")[0], ARCHS, build)


if __name__ == "__main__":
    sys.exit(main())

"""Convert an RLA-Net ImageNet checkpoint (``rla_resnet50`` / ``rla_resnet50_eca`` / 101, e.g. the official
``resnet50_rla_2283.pth.tar``) into a checkpoint of the detection backbone ``RLA_ResNet``.

    python -m rlanet.tools.convert_to_det resnet50_rla_2283.pth.tar pretrained/rla_r50_det.pth --arch r50

Every backbone key is carried over; ``bn2`` (the head's BatchNorm of the recurrent state) and ``fc`` are
dropped. The report lists them; the output (``{'state_dict', 'meta'}``) is what ``init_cfg=dict(
type='Pretrained', checkpoint=...)`` or ``pretrained=...`` reads. Status 2 with one message on a bad input."""
import sys

from common.backbone import converter_main

ARCHS = {"r50": "RLA-ResNet-50", "r50_eca": "ECA-RLA-ResNet-50 (ECA k 5-5-5-7)", "r101": "RLA-ResNet-101",
         "r101_eca": "ECA-RLA-ResNet-101"}


def build(arch):
    import rlanet

    kw = dict(layers=[3, 4, 23, 3] if arch.startswith("r101") else [3, 4, 6, 3])
    if arch.endswith("_eca"):
        kw["ECA"] = [5, 5, 5, 7]
    return rlanet.create_backbone("RLA_ResNet", **kw)


def main(argv=None):
    return converter_main(argv, "python -m rlanet.tools.convert_to_det", __doc__.split("\n\n")[0], ARCHS, build)


if __name__ == "__main__":
    sys.exit(main())

"""Parameters and FLOPs of an RLA-Net variant — the official ``paras_flops.py`` flags and output format.

    python rlanet/paras_flops.py -a rla_resnet50            # -i/--input-size 224
    python rlanet/paras_flops.py -a dsrla_mobilenetv2 -i 224 --no-print-model

Prints the model (unless ``--no-print-model``), then the raw counts ``{flops} {params}`` and the same in the
official ``clever_format`` style: ``"%.3f"`` with K/M/G/T at the thresholds 1e3/1e6/1e9/1e12, divided by
powers of 1024 (the README's "24.67M" params of RLA-ResNet-50 are 25,870,696 / 2**20), then one summary line
``{arch}: params {n} ({fmt}), FLOPs {n} ({fmt}) at 1x3xSxS``.

Counts come from the shared counter ``common.flops``: parameters once each (the single recurrent conv that
RLA-MobileNetV2 registers five times counts once, as ``model.parameters()`` does), FLOPs as fvcore
multiply-accumulates of one forward pass in eval mode. The official script used thop, which also counts BN,
ReLU and pooling ops, so its FLOPs are a little higher (R50: thop 4.19 Gi today, the README's 4.17 G from an
older thop; fvcore's conv + linear MACs are about 4.15 Gi).

Fixed official defects: runs on CPU for every registered variant (officially MobileNetV2 and the ablations need
``model.flops = True`` or CUDA for their h0, which the script never sets); ``-a`` lists the names on a typo.
"""
import argparse
import os
import sys
import warnings

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import rlanet  # noqa: E402
from common.flops import count_flops, count_params  # noqa: E402

__all__ = ["clever_format", "measure", "main"]

MODEL_NAMES = [v.name for v in rlanet.variants()]


def clever_format(n, fmt="%.3f"):
    """thop's ``clever_format`` as the official README used it: decimal thresholds, binary divisors."""
    for threshold, power, suffix in ((1e12, 4, "T"), (1e9, 3, "G"), (1e6, 2, "M"), (1e3, 1, "K")):
        if n > threshold:
            return fmt % (n / 1024 ** power) + suffix
    return fmt % n + "B"


def measure(arch, input_size=224):
    """(model, params, flops) of ``arch`` on a 1x3xSxS input."""
    model = rlanet.create_model(arch)
    x = torch.randn(1, 3, input_size, input_size)
    return model, count_params(model), count_flops(model, x)


def get_parser():
    p = argparse.ArgumentParser(description="RLA-Net parameters and FLOPs")
    p.add_argument("-a", "--arch", metavar="ARCH", default="rla_resnet50", choices=MODEL_NAMES,
                   help="model architecture: " + " | ".join(MODEL_NAMES) + " (default: rla_resnet50)")
    p.add_argument("-i", "--input-size", default=224, type=int, help="input size (default: 224)")
    p.add_argument("--no-print-model", dest="print_model", action="store_false",
                   help="do not print the model (the official script prints it)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.input_size < 32:
        print(f"error: -i/--input-size {args.input_size} is too small (at least 32)", file=sys.stderr)
        sys.exit(2)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")  # fvcore's tracing
    model, params, flops = measure(args.arch, args.input_size)
    if args.print_model:
        print(model)
    print(flops, params)
    print(clever_format(flops), clever_format(params))
    s = args.input_size
    print(f"{args.arch}: params {params} ({clever_format(params)}), FLOPs {flops} ({clever_format(flops)}) "
          f"at 1x3x{s}x{s}")
    return {"params": params, "flops": flops}


if __name__ == "__main__":
    main()

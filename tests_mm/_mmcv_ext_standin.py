"""TEST-ONLY stand-in for mmcv's compiled extension ``mmcv._ext``.

NOT FOR TRAINING OR EVALUATING REAL MODELS. The OpenMMLab tests of this project run with ``mmcv-lite``
(mmcv without its compiled C++/CUDA ops), because the full ``mmcv`` has to be compiled from source, which
takes far longer than a test run may. ``import mmdet.models`` needs ``mmcv._ext`` to exist; this module is put
in its place (``install()``; only when the real extension is missing) and implements the two ops the
detection tests actually execute, with torchvision's operators:

* ``nms``                                 -- ``torchvision.ops.nms`` (mmcv's ``offset`` emulated)
* ``roi_align_forward`` / ``_backward``   -- torchvision's RoIAlign (average pooling only)

Every other op of the extension is a function that raises ``NotImplementedError``. Users install the full
``mmcv`` (see the README); with it installed, ``install()`` does nothing and the tests use the real ops.
"""
import importlib.machinery
import importlib.util
import sys
import types

import torch

__all__ = ["install", "is_standin"]

STANDIN_FLAG = "__layerzoo_test_only_standin__"


def nms(bboxes, scores, iou_threshold, offset=0):
    import torchvision

    if bboxes.numel() == 0:
        return bboxes.new_zeros(0, dtype=torch.long)
    boxes = bboxes[:, :4]
    if offset:  # mmcv's offset=1 counts a box's last pixel: width = x2 - x1 + 1
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:4] + offset], dim=1)
    return torchvision.ops.nms(boxes.float(), scores.float(), float(iou_threshold))


def _avg_only(pool_mode):
    if pool_mode != 1:  # mmcv: 0 = max, 1 = avg
        raise NotImplementedError("test-only mmcv._ext stand-in: roi_align supports pool_mode='avg' only")


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width, spatial_scale,
                      sampling_ratio, pool_mode, aligned):
    import torchvision

    _avg_only(pool_mode)
    out = torchvision.ops.roi_align(input, rois.to(input.dtype), (aligned_height, aligned_width),
                                    spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned)
    output.copy_(out)


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height, aligned_width,
                       spatial_scale, sampling_ratio, pool_mode, aligned):
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    _avg_only(pool_mode)
    n, c, h, w = grad_input.shape
    grad = torch.ops.torchvision._roi_align_backward(
        grad_output, rois.to(grad_output.dtype), spatial_scale, aligned_height, aligned_width, n, c, h, w,
        sampling_ratio, aligned)
    grad_input.copy_(grad)


_IMPLEMENTED = {"nms": nms, "roi_align_forward": roi_align_forward, "roi_align_backward": roi_align_backward}


def _missing(name):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"mmcv._ext.{name} is not available: this is the test-only stand-in for mmcv's compiled ops "
            "(only nms and roi_align are implemented); install the full mmcv to use it")

    op.__name__ = name
    return op


def _build_module():
    mod = types.ModuleType("mmcv._ext", __doc__)
    # a spec without a loader: mmengine's mmcv_full_available() then (rightly) answers False
    mod.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
    mod.__dict__.update(_IMPLEMENTED)
    setattr(mod, STANDIN_FLAG, True)
    def __getattr__(name):
        # every other op mmcv.ops asks for exists (mmcv checks with hasattr at import) but raises when called
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(name)

    mod.__getattr__ = __getattr__
    return mod


def is_standin():
    return getattr(sys.modules.get("mmcv._ext"), STANDIN_FLAG, False)


def install():
    """Put the stand-in in place of ``mmcv._ext`` unless the compiled extension is installed.

    Returns True when the stand-in is in use. Must run before ``mmcv.ops`` (or ``mmdet.models``) is imported.
    """
    if "mmcv._ext" in sys.modules:
        return is_standin()
    import mmcv

    if importlib.util.find_spec("mmcv._ext") is not None:
        return False  # the real compiled ops
    sys.modules["mmcv._ext"] = mod = _build_module()
    mmcv._ext = mod
    return True

"""The test-only stand-in for mmcv's compiled ops: nms (with mmcv's ``offset``) against a hand-written greedy NMS,
roi_align forward / backward through mmcv.ops against torchvision's autograd, every other op refused."""
import pytest
import torch

import _mmcv_ext_standin

pytestmark = pytest.mark.skipif(not _mmcv_ext_standin.is_standin(), reason="the compiled mmcv ops are installed")


def _greedy_nms(boxes, scores, thr, offset):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            x0, y0 = max(boxes[i][0], boxes[j][0]), max(boxes[i][1], boxes[j][1])
            x1, y1 = min(boxes[i][2], boxes[j][2]), min(boxes[i][3], boxes[j][3])
            inter = max(0.0, x1 - x0 + offset) * max(0.0, y1 - y0 + offset)
            area = lambda b: (b[2] - b[0] + offset) * (b[3] - b[1] + offset)  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("offset", [0, 1])
def test_nms_matches_greedy_nms(offset):
    from mmcv.ops import nms

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=gen) * 40
    boxes = torch.cat([xy, xy + 4 + torch.rand(60, 2, generator=gen) * 12], dim=1)
    scores = torch.rand(60, generator=gen)
    _, keep = nms(boxes, scores, 0.3, offset=offset)
    assert keep.tolist() == _greedy_nms(boxes.double().tolist(), scores.tolist(), 0.3, offset)


def test_roi_align_forward_backward_match_torchvision():
    import torchvision
    from mmcv.ops import roi_align

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 20, 24, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.5, 2.0, 15.0, 12.5], [1, 0.0, 0.0, 23.0, 19.0], [1, 5.2, 3.1, 9.9, 8.7]],
                        dtype=torch.float64)
    y = roi_align(x, rois, (7, 5), 0.5, 2, "avg", True)
    grad = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, x, grad)
    x2 = x.detach().clone().requires_grad_()
    y2 = torchvision.ops.roi_align(x2, rois, (7, 5), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    (gx2,) = torch.autograd.grad(y2, x2, grad)
    assert torch.allclose(y, y2, rtol=0, atol=1e-12) and torch.allclose(gx, gx2, rtol=0, atol=1e-12)
    with pytest.raises(NotImplementedError, match="pool_mode='avg'"):
        roi_align(x, rois, 7, 0.5, 2, "max", True)


def test_other_ops_are_refused():
    import mmcv

    with pytest.raises(NotImplementedError, match="test-only stand-in"):
        mmcv._ext.deform_conv_forward()
    assert _mmcv_ext_standin.is_standin() and "TEST-ONLY" in _mmcv_ext_standin.__doc__

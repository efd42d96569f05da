"""DAC-DETR losses, matchers, assigner and post-processing against slow float64 references.

Every reference below is written with plain Python loops / ``math`` so that it shares no
code with the vectorised implementation under test.
"""
import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dacdetr.models.criterion import (
    SetCriterion,
    build_criterion,
    build_weight_dict,
    ia_bce_loss,
    local_rank_one2many,
    local_rank_one2one,
    sigmoid_focal_loss,
    weighted_total,
)
from dacdetr.models.matcher import HungarianMatcher, build_matcher
from dacdetr.models.onetomany import Matcher, Stage2Assigner, sample_topk, subsample_labels
from dacdetr.models.postprocess import NMSPostProcess, PostProcess
from dacdetr.util import box_ops

F64 = torch.float64


# ----------------------------------------------------------------------------- slow references
def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def to_xyxy(b):
    cx, cy, w, h = b
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def area(b):
    return (b[2] - b[0]) * (b[3] - b[1])


def iou_union(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = area(a) + area(b) - inter
    return inter / union, union


def giou(a, b):
    i, u = iou_union(a, b)
    ew = max(a[2], b[2]) - min(a[0], b[0])
    eh = max(a[3], b[3]) - min(a[1], b[1])
    enc = ew * eh
    return i - (enc - u) / enc


def tl(t):
    return t.detach().to(F64).tolist()


def rand_boxes(n, gen, lo=0.05, hi=0.35):
    r = torch.rand(n, 4, generator=gen, dtype=F64)
    return torch.cat([0.25 + 0.5 * r[:, :2], lo + (hi - lo) * r[:, 2:]], 1)


def slow_hungarian_cost(logits, boxes, labels, gt_boxes, wc=2.0, wb=5.0, wg=2.0):
    """(Q, M) list of lists: focal class cost + L1 + -GIoU."""
    out = []
    for q in range(len(logits)):
        row = []
        for m in range(len(labels)):
            p = sig(logits[q][labels[m]])
            pos = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8)
            neg = 0.75 * p ** 2 * -math.log(1 - p + 1e-8)
            l1 = sum(abs(boxes[q][i] - gt_boxes[m][i]) for i in range(4))
            g = giou(to_xyxy(boxes[q]), to_xyxy(gt_boxes[m]))
            row.append(wb * l1 + wc * (pos - neg) - wg * g)
        out.append(row)
    return out


def slow_ia_bce(logits, positives, rank_w, avg):
    """logits: [B][Q][C]; positives: list of (b, q, c, pred_box, gt_box); rank_w: weight per positive."""
    pos_t = {}
    for (b, q, c, pb, gb), w in zip(positives, rank_w):
        p = sig(logits[b][q][c])
        i, _ = iou_union(to_xyxy(pb), to_xyxy(gb))
        t = max(p ** 0.25 * i ** 0.75, 0.01) * w
        pos_t[(b, q, c)] = t
    total = 0.0
    for b, qs in enumerate(logits):
        for q, cs in enumerate(qs):
            for c, x in enumerate(cs):
                p = sig(x)
                if (b, q, c) in pos_t:
                    t = pos_t[(b, q, c)]
                    total += -t * math.log(p) - (1 - t) * math.log(1 - p)
                else:
                    total += -(p ** 2) * math.log(1 - p)
    return total / avg


def slow_rank_one2many(quality, gts):
    ranks = []
    for k, (g, qv) in enumerate(zip(gts, quality)):
        better = sum(1 for j, (g2, q2) in enumerate(zip(gts, quality)) if g2 == g and (q2 > qv or (q2 == qv and j < k)))
        ranks.append(better)
    return ranks


def slow_focal(logits, onehot, num_boxes, alpha=0.25, gamma=2.0):
    B, Q, C = len(logits), len(logits[0]), len(logits[0][0])
    total = 0.0
    for b in range(B):
        for c in range(C):
            s = 0.0
            for q in range(Q):
                x, y = logits[b][q][c], onehot[b][q][c]
                p = sig(x)
                ce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
                pt = p * y + (1 - p) * (1 - y)
                a = alpha * y + (1 - alpha) * (1 - y)
                s += a * ce * (1 - pt) ** gamma
            total += s / Q
    return total / num_boxes


def slow_nms(boxes, scores, labels, thr):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(labels[j] != labels[i] or iou_union(boxes[i], boxes[j])[0] <= thr for j in keep):
            keep.append(i)
    return keep


# ----------------------------------------------------------------------------- box_ops
def test_box_ops_against_loops():
    gen = torch.Generator().manual_seed(1)
    a, b = rand_boxes(5, gen), rand_boxes(4, gen)
    ax, bx = box_ops.box_cxcywh_to_xyxy(a), box_ops.box_cxcywh_to_xyxy(b)
    assert torch.allclose(box_ops.box_xyxy_to_cxcywh(ax), a, atol=1e-15)
    iou, union = box_ops.box_iou(ax, bx)
    g = box_ops.generalized_box_iou(ax, bx)
    for i in range(5):
        assert tuple(tl(ax[i])) == pytest.approx(to_xyxy(tl(a[i])), abs=1e-15)
        for j in range(4):
            ri, ru = iou_union(to_xyxy(tl(a[i])), to_xyxy(tl(b[j])))
            assert iou[i, j].item() == pytest.approx(ri, abs=1e-12)
            assert union[i, j].item() == pytest.approx(ru, abs=1e-12)
            assert g[i, j].item() == pytest.approx(giou(to_xyxy(tl(a[i])), to_xyxy(tl(b[j]))), abs=1e-12)
    # hand case: unit squares offset by half -> IoU 1/3, enclosing 1.5, GIoU 1/3
    s1 = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=F64)
    s2 = torch.tensor([[0.5, 0.0, 1.5, 1.0]], dtype=F64)
    assert box_ops.box_iou(s1, s2)[0].item() == pytest.approx(1 / 3)
    assert box_ops.generalized_box_iou(s1, s2).item() == pytest.approx(1 / 3)
    far = torch.tensor([[2.0, 0.0, 3.0, 1.0]], dtype=F64)  # gap of 1: IoU 0, GIoU = -(3-2)/3
    assert box_ops.generalized_box_iou(s1, far).item() == pytest.approx(-1 / 3)
    ew = box_ops.elementwise_generalized_box_iou(ax[:4], bx)
    assert torch.allclose(ew, torch.diag(g[:4]), atol=1e-15)
    with pytest.raises(ValueError):
        box_ops.generalized_box_iou(s1.flip(-1), s1)


# ----------------------------------------------------------------------------- Hungarian matcher
@pytest.mark.parametrize("num_q,num_gt", [(3, 3), (4, 3), (4, 4)])
def test_hungarian_matches_brute_force(num_q, num_gt):
    gen = torch.Generator().manual_seed(10 * num_q + num_gt)
    C = 5
    logits = torch.randn(1, num_q, C, generator=gen, dtype=F64) * 2
    boxes = rand_boxes(num_q, gen)[None]
    labels = torch.randint(0, C, (num_gt,), generator=gen)
    gt = rand_boxes(num_gt, gen)
    matcher = HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2)
    (qi, gi), = matcher({"pred_logits": logits, "pred_boxes": boxes}, [{"labels": labels, "boxes": gt}])
    cost = slow_hungarian_cost(tl(logits[0]), tl(boxes[0]), labels.tolist(), tl(gt))
    assert torch.allclose(
        matcher.cost_matrix(logits[0], boxes[0], labels, gt), torch.tensor(cost, dtype=F64), atol=1e-10
    )
    best, best_perm = float("inf"), None
    for perm in itertools.permutations(range(num_q), num_gt):  # perm[m] = query of gt m
        c = sum(cost[perm[m]][m] for m in range(num_gt))
        if c < best:
            best, best_perm = c, perm
    got = sum(cost[q][m] for q, m in zip(qi.tolist(), gi.tolist()))
    assert got == pytest.approx(best, abs=1e-10)
    assert dict(zip(gi.tolist(), qi.tolist())) == {m: best_perm[m] for m in range(num_gt)}
    assert qi.tolist() == sorted(qi.tolist()) and len(qi) == num_gt


def test_hungarian_cdecoder_and_empty_targets():
    gen = torch.Generator().manual_seed(3)
    out = {
        "pred_logits": torch.randn(2, 4, 3, generator=gen),
        "pred_boxes": rand_boxes(8, gen).float().view(2, 4, 4),
    }
    out["pred_logits_cdecoder"] = out["pred_logits"].flip(1)
    out["pred_boxes_cdecoder"] = out["pred_boxes"].flip(1)
    tg = [{"labels": torch.tensor([1, 2]), "boxes": rand_boxes(2, gen).float()},
          {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    m = build_matcher(SimpleNamespace(set_cost_class=2, set_cost_bbox=5, set_cost_giou=2))
    a = m(out, tg)
    b = m(out, tg, onetone=False)
    assert sorted((3 - b[0][0]).tolist()) == sorted(a[0][0].tolist())  # flipped queries
    assert len(a[1][0]) == 0 and len(a[1][1]) == 0 and a[1][0].dtype == torch.int64


# ----------------------------------------------------------------------------- one-to-many pieces
def slow_threshold_matcher(quality, thr=0.4):
    M, N = len(quality), len(quality[0])
    matches, labels = [], []
    for n in range(N):
        col = [quality[m][n] for m in range(M)]
        best = max(range(M), key=lambda m: (col[m], -m))  # first argmax
        matches.append(best)
        labels.append(1 if col[best] >= thr else 0)
    for m in range(M):
        top = max(range(N), key=lambda n: (quality[m][n], -n))
        labels[top] = 1
    return matches, labels


def test_matcher_low_quality_hand_case():
    q = torch.tensor([[0.10, 0.50, 0.20, 0.05, 0.30],
                      [0.30, 0.45, 0.35, 0.10, 0.00]], dtype=F64)
    matches, labels = Matcher([0.4], [0, 1], allow_low_quality_matches=True)(q)
    # query 1: 0.50 >= 0.4 -> positive (gt 0); gt 1's best query is 1 as well (0.45);
    # nothing else reaches 0.4 and no other query is a gt's best -> negatives.
    assert matches.tolist() == [1, 0, 1, 1, 0]
    assert labels.tolist() == [0, 1, 0, 0, 0]
    q2 = q.clone()
    q2[1, 1] = 0.0  # gt 1's best is now query 2 (0.35): low-quality match, keeps its argmax gt
    matches, labels = Matcher([0.4], [0, 1], allow_low_quality_matches=True)(q2)
    assert labels.tolist() == [0, 1, 1, 0, 0] and matches[2].item() == 1
    matches, labels = Matcher([0.4], [0, 1], allow_low_quality_matches=False)(q2)
    assert labels.tolist() == [0, 1, 0, 0, 0]
    matches, labels = Matcher([0.4], [0, 1])(torch.zeros(0, 7))
    assert matches.tolist() == [0] * 7 and labels.tolist() == [0] * 7 and labels.dtype == torch.int8


def test_matcher_random_vs_loops():
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        q = torch.rand(3, 12, generator=gen, dtype=F64) * 0.7
        m, lab = Matcher([0.4], [0, 1], allow_low_quality_matches=True)(q)
        rm, rl = slow_threshold_matcher(tl(q))
        assert m.tolist() == rm and lab.tolist() == rl


def test_subsample_labels_counts_and_seed():
    labels = torch.tensor([400, 3, 400, -1, 7, 7, 400, 2, 400, 5])
    torch.manual_seed(0)
    pos, neg = subsample_labels(labels, 8, 0.25, 400)
    assert len(pos) == 2 and len(neg) == 4  # int(8*0.25)=2 positives, 6 slots but only 4 negatives
    assert set(pos.tolist()) <= {1, 4, 5, 7, 9} and set(neg.tolist()) == {0, 2, 6, 8}
    torch.manual_seed(0)
    pos2, neg2 = subsample_labels(labels, 8, 0.25, 400)
    assert pos.tolist() == pos2.tolist() and neg.tolist() == neg2.tolist()
    pos, neg = subsample_labels(labels, 300, 0.25, 400)
    assert sorted(pos.tolist()) == [1, 4, 5, 7, 9]


def test_sample_topk_hand_case():
    quality = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.6, 0.0],
                            [0.5, 0.1, 0.4, 0.2, 0.9, 0.3, 0.8, 0.6],
                            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1]], dtype=F64)
    # gt 1 sampled 8 times (capped at k=3), gt 0 twice; gt 2 never -> absent
    pr = torch.arange(10) % 8
    gt = torch.tensor([1, 0, 1, 1, 1, 0, 1, 1, 1, 1])
    out_pr, out_gt = sample_topk(pr, gt, quality, 3)
    assert out_gt.tolist() == [0, 0, 1, 1, 1]
    assert out_pr.tolist() == [1, 3, 4, 6, 7]
    e = torch.zeros(0, dtype=torch.long)
    assert sample_topk(e, e, quality, 3)[0].numel() == 0


def test_stage2_assigner_vs_loops():
    gen = torch.Generator().manual_seed(7)
    Q, C = 14, 6
    gt = rand_boxes(3, gen)
    # predictions: jittered copies of the gts plus random boxes
    boxes = torch.cat([gt.repeat(3, 1) + 0.02 * torch.randn(9, 4, generator=gen, dtype=F64), rand_boxes(Q - 9, gen)])
    logits = torch.randn(1, Q, C, generator=gen, dtype=F64)
    labels = torch.tensor([2, 0, 2])
    out = {"pred_logits_cdecoder": logits, "pred_boxes": boxes[None]}
    (pr, g), = Stage2Assigner(300, max_k=2)(out, [{"labels": labels, "boxes": gt}])[0]

    quality = [[0.7 * iou_union(to_xyxy(tl(boxes[n])), to_xyxy(tl(gt[m])))[0] + 0.3 * sig(logits[0, n, labels[m]].item())
                for n in range(Q)] for m in range(3)]
    matches, lab = slow_threshold_matcher(quality)
    count = {}
    for n in range(Q):  # < 75 positives: every positive is sampled
        if lab[n] == 1:
            count[matches[n]] = count.get(matches[n], 0) + 1
    exp_pr, exp_g = [], []
    for m in sorted(count):
        order = sorted(range(Q), key=lambda n: -quality[m][n])
        for n in order[: min(count[m], 2)]:
            exp_pr.append(n)
            exp_g.append(m)
    assert g.tolist() == exp_g and pr.tolist() == exp_pr
    assert len(exp_pr) >= 3


def test_stage2_assigner_caps_positives_at_quarter_of_samples():
    Q = 40
    gt = torch.tensor([[0.5, 0.5, 0.4, 0.4]], dtype=F64)
    out = {"pred_logits_cdecoder": torch.full((1, Q, 3), 5.0, dtype=F64), "pred_boxes": gt.repeat(Q, 1)[None]}
    assigner = Stage2Assigner(num_queries=8, max_k=6)  # int(8 * 0.25) = 2 sampled positives
    (pr, g), = assigner(out, [{"labels": torch.tensor([1]), "boxes": gt}])[0]
    assert g.tolist() == [0, 0] and len(set(pr.tolist())) == 2
    (pr, g), = assigner(out, [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4, dtype=F64)}])[0]
    assert pr.numel() == 0 and g.numel() == 0


# ----------------------------------------------------------------------------- ranks, IA-BCE, focal, boxes
def test_local_ranks():
    quality = torch.tensor([0.3, 0.9, 0.5, 0.7, 0.2, 0.8, 0.1])
    indices = [(torch.arange(5), torch.tensor([0, 0, 1, 0, 1])), (torch.arange(2), torch.tensor([0, 0]))]
    r = local_rank_one2many(quality, indices)
    assert r.tolist() == [2, 0, 0, 1, 1, 0, 1]
    assert r.tolist() == slow_rank_one2many(quality[:5].tolist(), [0, 0, 1, 0, 1]) + [0, 1]
    o2o = [(torch.tensor([4, 1]), torch.tensor([1, 0])), (torch.zeros(0, dtype=torch.long),) * 2]
    assert local_rank_one2one(quality[:2], o2o).tolist() == [0, 0]


@pytest.mark.parametrize("mode", [None, "one2one", "one2many"])
def test_ia_bce_vs_loops(mode):
    gen = torch.Generator().manual_seed(11)
    B, Q, C = 2, 6, 4
    logits = (torch.randn(B, Q, C, generator=gen, dtype=F64) * 2).requires_grad_()
    pred = rand_boxes(B * Q, gen).view(B, Q, 4)
    gts = [rand_boxes(2, gen), rand_boxes(1, gen)]
    labels = [torch.tensor([1, 3]), torch.tensor([2])]
    if mode == "one2one":
        indices = [(torch.tensor([0, 4]), torch.tensor([1, 0])), (torch.tensor([2]), torch.tensor([0]))]
    else:
        indices = [(torch.tensor([0, 1, 5, 3]), torch.tensor([0, 0, 0, 1])), (torch.tensor([2, 4]), torch.tensor([0, 0]))]
    bidx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
    qidx = torch.cat([q for q, _ in indices])
    cls = torch.cat([labels[b][g] for b, (_, g) in enumerate(indices)])
    src = pred[bidx, qidx]
    tgt = torch.cat([gts[b][g] for b, (_, g) in enumerate(indices)])
    loss, w = ia_bce_loss(logits, (bidx, qidx, cls), src, tgt, indices, avg_factor=3.0, rank_mode=mode)

    positives = [(b, q, c, tl(s), tl(t)) for b, q, c, s, t in zip(bidx.tolist(), qidx.tolist(), cls.tolist(), src, tgt)]
    if mode == "one2many":
        quality = [max(sig(logits[b, q, c].item()) ** 0.25 * iou_union(to_xyxy(s), to_xyxy(t))[0] ** 0.75, 0.01)
                   for b, q, c, s, t in positives]
        ranks = []
        start = 0
        for _, g in indices:
            ranks += slow_rank_one2many(quality[start:start + len(g)], g.tolist())
            start += len(g)
        rank_w = [math.exp(-r / 1.5) for r in ranks]
        assert ranks != [0] * len(ranks)
        assert torch.allclose(w.double(), torch.tensor(rank_w, dtype=F64), atol=1e-7)
    else:
        rank_w = [1.0] * len(positives)
    ref = slow_ia_bce(tl(logits), positives, rank_w, 3.0)
    assert loss.item() == pytest.approx(ref, rel=1e-6 if mode == "one2many" else 1e-12)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_ia_bce_large_logits_stay_finite():
    logits = torch.tensor([[[40.0, -120.0]]], requires_grad=True)
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    idx = (torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    loss, _ = ia_bce_loss(logits, idx, box, box, [(torch.tensor([0]), torch.tensor([0]))], 1.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_loss_vs_loops():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 3, generator=gen, dtype=F64) * 2
    y = torch.zeros_like(x)
    y[0, 1, 0] = y[1, 3, 0] = y[1, 4, 2] = 1
    got = sigmoid_focal_loss(x, y, 3.0)
    assert got.item() == pytest.approx(slow_focal(tl(x), tl(y), 3.0), rel=1e-12)


def _toy_criterion():
    return build_criterion(SimpleNamespace(set_cost_class=2, set_cost_bbox=5, set_cost_giou=2))[0]


def test_rank_weighted_box_losses_vs_loops():
    gen = torch.Generator().manual_seed(4)
    B, Q, C = 1, 6, 5
    out = {"pred_logits_cdecoder": torch.randn(B, Q, C, generator=gen, dtype=F64),
           "pred_boxes_cdecoder": rand_boxes(Q, gen)[None]}
    tg = [{"labels": torch.tensor([1, 4]), "boxes": rand_boxes(2, gen)}]
    indices = [(torch.tensor([0, 2, 3, 5]), torch.tensor([1, 1, 0, 1]))]
    crit = _toy_criterion()
    crit.loss_labels(out, tg, indices, 6.0, log=False)
    got = crit.loss_boxes(out, tg, indices, 6.0)
    q = [max(sig(out["pred_logits_cdecoder"][0, n, tg[0]["labels"][g]].item()) ** 0.25
             * iou_union(to_xyxy(tl(out["pred_boxes_cdecoder"][0, n])), to_xyxy(tl(tg[0]["boxes"][g])))[0] ** 0.75, 0.01)
         for n, g in zip([0, 2, 3, 5], [1, 1, 0, 1])]
    w = [math.exp(-r / 1.5) for r in slow_rank_one2many(q, [1, 1, 0, 1])]
    l1 = g_ = 0.0
    for wi, n, g in zip(w, [0, 2, 3, 5], [1, 1, 0, 1]):
        pb, gb = tl(out["pred_boxes_cdecoder"][0, n]), tl(tg[0]["boxes"][g])
        l1 += wi * sum(abs(a - b) for a, b in zip(pb, gb))
        g_ += wi * (1 - giou(to_xyxy(pb), to_xyxy(gb)))
    assert got["loss_bbox"].item() == pytest.approx(l1 / 6.0, rel=1e-6)
    assert got["loss_giou"].item() == pytest.approx(g_ / 6.0, rel=1e-6)
    enc = crit.loss_boxes(out, tg, indices, 6.0, enc=True)  # encoder: weight 1
    assert enc["loss_bbox"].item() == pytest.approx(
        sum(sum(abs(a - b) for a, b in zip(tl(out["pred_boxes_cdecoder"][0, n]), tl(tg[0]["boxes"][g])))
            for n, g in zip([0, 2, 3, 5], [1, 1, 0, 1])) / 6.0, rel=1e-12)


# ----------------------------------------------------------------------------- full criterion
def make_outputs(gen, B=2, Q=12, C=91, max_gt=3, groups=2, layers=6, S=16, with_dn=True):
    """Random tensors shaped like the model's training output (dn queries already split off)."""
    leaves = []

    def lg(*s):
        t = torch.randn(*s, generator=gen, dtype=F64).requires_grad_()
        leaves.append(t)
        return t

    def bx(*s):
        r = torch.rand(*s, 4, generator=gen, dtype=F64)
        t = torch.logit(torch.cat([0.25 + 0.5 * r[..., :2], 0.05 + 0.3 * r[..., 2:]], -1)).requires_grad_()
        leaves.append(t)
        return t.sigmoid()

    def layer(q, suffixes=("", "_cdecoder")):
        d = {}
        for s in suffixes:
            d["pred_logits" + s] = lg(B, q, C)
            d["pred_boxes" + s] = bx(B, q)
        return d

    out = layer(Q)
    out["aux_outputs"] = [layer(Q) for _ in range(layers - 1)]
    enc = layer(S, ("",))
    enc["pred_logits_cdecoder"], enc["pred_boxes_cdecoder"] = enc["pred_logits"], enc["pred_boxes"]
    enc["anchors"] = torch.rand(B, S, 4, generator=gen)
    out["enc_outputs"] = enc
    pad = 2 * max_gt * groups
    meta = {"pad_size": pad if with_dn else 0, "num_dn_group": groups if with_dn else 1}
    out["dn_meta"], out["dn_meta_cdecoder"] = dict(meta), dict(meta)
    if with_dn:
        known = layer(pad, ("",))
        known["aux_outputs"] = [layer(pad, ("",)) for _ in range(layers - 1)]
        known_c = layer(pad, ("_cdecoder",))
        known_c["aux_outputs"] = [layer(pad, ("_cdecoder",)) for _ in range(layers - 1)]
        out["dn_meta"]["output_known_lbs_bboxes"] = known
        out["dn_meta_cdecoder"]["output_known_lbs_bboxes"] = known_c
    return out, leaves


def make_targets(gen, counts, C=91):
    return [{"labels": torch.randint(1, C, (n,), generator=gen), "boxes": rand_boxes(n, gen)} for n in counts]


def repeat3(targets):
    return [{"labels": t["labels"].repeat(3), "boxes": t["boxes"].repeat(3, 1)} for t in targets]


def expected_keys(layers=6):
    keys = set()
    terms = ("loss_ce", "loss_bbox", "loss_giou")
    for sfx in [""] + [f"_{i}" for i in range(layers - 1)]:
        keys |= {k + sfx for k in terms + ("cardinality_error",)}
        keys |= {k + sfx + "_one2one" for k in terms}
        keys |= {f"{k}_dn{sfx}" for k in terms + ("cardinality_error",)}
        keys |= {f"{k}_dn{sfx}_one2one" for k in terms}
    keys |= {k + "_enc" for k in terms + ("cardinality_error",)}
    keys.add("class_error")
    return keys


def test_weight_dict():
    wd = build_weight_dict()
    assert len(wd) == 168
    assert wd["loss_ce_enc"] == 2 and wd["loss_ce_enc_g2"] == 2 and wd["loss_ce_enc_one2one"] == 2
    assert wd["loss_bbox_dn_4_one2one_g2"] == 5 and wd["loss_giou_3"] == 2 and wd["loss_ce_dn"] == 1
    assert list(wd)[:4] == ["loss_ce", "loss_ce_g2", "loss_ce_one2one", "loss_ce_one2one_g2"]
    assert not any(k.startswith("cardinality") or k == "class_error" for k in wd)
    assert expected_keys() - {"class_error"} - {k for k in expected_keys() if "cardinality" in k} <= set(wd)


def test_full_criterion_keys_values_and_gradient():
    gen = torch.Generator().manual_seed(0)
    out, leaves = make_outputs(gen)
    targets = make_targets(gen, [3, 2])
    crit, post = build_criterion(SimpleNamespace(set_cost_class=2, set_cost_bbox=5, set_cost_giou=2, dec_layers=6))
    assert isinstance(post["bbox"], NMSPostProcess)
    crit.train()
    torch.manual_seed(0)
    losses = crit(out, targets, repeat3(targets))
    assert set(losses) == expected_keys()
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert all(losses[k].item() > 0 for k in losses if k.startswith("loss_"))
    total = weighted_total(losses, crit.weight_dict)
    assert torch.isfinite(total)
    total.backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in leaves)

    # spot-check three branches against independent recomputation
    n_gt = 5.0
    idx = crit.matcher(out["enc_outputs"], [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets], onetone=False)
    onehot = torch.zeros(2, 16, 91, dtype=F64)
    for b, (q, _) in enumerate(idx):
        onehot[b, q, 0] = 1
    ref = slow_focal(tl(out["enc_outputs"]["pred_logits"]), onehot.tolist(), n_gt) * 16
    assert losses["loss_ce_enc"].item() == pytest.approx(ref, rel=1e-9)

    dn = out["dn_meta"]["output_known_lbs_bboxes"]
    positives = []
    for b, t in enumerate(targets):  # group g, gt j -> query g * 6 + j
        for g in range(2):
            for j in range(len(t["labels"])):
                q = g * 6 + j
                positives.append((b, q, int(t["labels"][j]), tl(dn["pred_boxes"][b, q]), tl(t["boxes"][j])))
    ref = slow_ia_bce(tl(dn["pred_logits"]), positives, [1.0] * len(positives), n_gt * 2)
    assert losses["loss_ce_dn_one2one"].item() == pytest.approx(ref, rel=1e-9)
    ref_l1 = sum(sum(abs(a - c) for a, c in zip(p[3], p[4])) for p in positives) / (n_gt * 2)
    assert losses["loss_bbox_dn_one2one"].item() == pytest.approx(ref_l1, rel=1e-9)

    o2o = crit.matcher(out["aux_outputs"][2], targets)
    positives = [(b, q, int(targets[b]["labels"][g]), tl(out["aux_outputs"][2]["pred_boxes"][b, q]), tl(targets[b]["boxes"][g]))
                 for b, (qs, gs) in enumerate(o2o) for q, g in zip(qs.tolist(), gs.tolist())]
    ref = slow_ia_bce(tl(out["aux_outputs"][2]["pred_logits"]), positives, [1.0] * len(positives), n_gt)
    assert losses["loss_ce_2_one2one"].item() == pytest.approx(ref, rel=1e-9)


def test_one2many_branch_normaliser_and_reproducibility():
    gen = torch.Generator().manual_seed(1)
    out, _ = make_outputs(gen, Q=40, with_dn=False, layers=2)
    targets = make_targets(gen, [2, 1])
    crit = _toy_criterion()
    torch.manual_seed(3)
    a = crit(out, targets, repeat3(targets))
    torch.manual_seed(3)
    b = crit(out, targets, targets)  # balance count 3 instead of 9
    for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_0"):
        assert a[k].item() * 9 == pytest.approx(b[k].item() * 3, rel=1e-12)
    assert a["loss_ce_one2one"].item() == pytest.approx(b["loss_ce_one2one"].item(), rel=1e-12)
    # the rank-weighted C-decoder loss agrees with a loop recomputation
    torch.manual_seed(3)
    idx, _ = crit.one2many({k: v for k, v in out.items() if k != "aux_outputs"}, targets)
    positives, quality = [], []
    for bi, (qs, gs) in enumerate(idx):
        for q, g in zip(qs.tolist(), gs.tolist()):
            c = int(targets[bi]["labels"][g])
            pb, gb = tl(out["pred_boxes_cdecoder"][bi, q]), tl(targets[bi]["boxes"][g])
            positives.append((bi, q, c, pb, gb))
            quality.append(max(sig(out["pred_logits_cdecoder"][bi, q, c].item()) ** 0.25
                               * iou_union(to_xyxy(pb), to_xyxy(gb))[0] ** 0.75, 0.01))
    ranks, start = [], 0
    for _, gs in idx:
        ranks += slow_rank_one2many(quality[start:start + len(gs)], gs.tolist())
        start += len(gs)
    assert max(ranks) > 0  # some gt has several queries
    ref = slow_ia_bce(tl(out["pred_logits_cdecoder"]), positives, [math.exp(-r / 1.5) for r in ranks], 9.0)
    assert a["loss_ce"].item() == pytest.approx(ref, rel=1e-6)


def test_num_boxes_is_averaged_over_ranks(monkeypatch):
    import common.distributed as cdist

    gen = torch.Generator().manual_seed(12)
    out, _ = make_outputs(gen, with_dn=False, layers=1)
    out.pop("aux_outputs")
    targets = make_targets(gen, [2, 1])  # 3 boxes here
    crit = _toy_criterion()
    single = crit(out, targets, repeat3(targets))
    # pretend a second rank holds 5 boxes (15 balanced): normalisers become 4 and 12
    monkeypatch.setattr(cdist, "get_world_size", lambda: 2)
    monkeypatch.setattr(cdist, "all_reduce_sum", lambda t: t + (5.0 if t.item() == 3 else 15.0))
    dist = crit(out, targets, repeat3(targets))
    for k in ("loss_bbox_one2one", "loss_giou_one2one", "loss_ce_enc"):
        assert dist[k].item() * 4 == pytest.approx(single[k].item() * 3, rel=1e-12)
    for k in ("loss_bbox", "loss_ce"):
        assert dist[k].item() * 12 == pytest.approx(single[k].item() * 9, rel=1e-12)


def test_zero_gt_image_and_empty_batch():
    gen = torch.Generator().manual_seed(2)
    out, leaves = make_outputs(gen, max_gt=2)
    targets = make_targets(gen, [2, 0])
    crit = _toy_criterion()
    losses = crit(out, targets, repeat3(targets))
    assert set(losses) == expected_keys()
    assert all(torch.isfinite(v) for v in losses.values())
    weighted_total(losses, crit.weight_dict).backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves if t.grad is not None)

    # no gt at all: dn has pad_size 0 (no known outputs) -> zero placeholders; negatives only
    out, leaves = make_outputs(gen, with_dn=False)
    targets = make_targets(gen, [0, 0])
    losses = crit(out, targets, repeat3(targets))
    assert set(losses) == expected_keys()
    assert losses["loss_bbox"].item() == 0 and losses["loss_ce_dn_3_one2one"].item() == 0
    assert losses["class_error"].item() == 100 and losses["loss_ce"].item() > 0
    total = weighted_total(losses, crit.weight_dict)
    assert torch.isfinite(total)
    total.backward()
    assert out["pred_logits_cdecoder"] is not None


def test_eval_mode_uses_placeholders():
    gen = torch.Generator().manual_seed(6)
    out, _ = make_outputs(gen, with_dn=False)
    for k in ("dn_meta", "dn_meta_cdecoder"):
        out.pop(k)
    targets = make_targets(gen, [1, 2])
    crit = _toy_criterion().eval()
    with torch.no_grad():
        losses = crit(out, targets, [{k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in t.items()} for t in targets])
    assert set(losses) == expected_keys()
    assert losses["loss_giou_dn_0_one2one"].item() == 0 and losses["loss_giou_0_one2one"].item() > 0


# ----------------------------------------------------------------------------- post-processing
def test_nms_postprocess_vs_loops():
    gen = torch.Generator().manual_seed(8)
    B, Q, C = 2, 6, 3
    boxes = []
    for _ in range(B):  # per image: three boxes, two near-duplicates (IoU > 0.8), one shrunk copy (IoU 0.25)
        base = rand_boxes(3, gen, 0.2, 0.4)
        half = torch.tensor([1, 1, 0.5, 0.5], dtype=F64)
        boxes.append(torch.stack([base[0], base[0] + 0.005, base[1], base[1] - 0.004, base[2], base[2] * half]))
    boxes = torch.stack(boxes)
    logits = torch.randn(B, Q, C, generator=gen, dtype=F64) * 2
    sizes = torch.tensor([[100, 200], [300, 150]])
    post = NMSPostProcess(pre_topk=12, iou_threshold=0.8, keep=7)
    res = post({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    for b in range(B):
        h, w = sizes[b].tolist()
        cands = [(sig(logits[b, q, c].item()), q, c) for q in range(Q) for c in range(C)]
        cands = sorted(cands, key=lambda s: -s[0])[:12]
        bxs = [tuple(v * s for v, s in zip(to_xyxy(tl(boxes[b, q])), (w, h, w, h))) for _, q, _ in cands]
        keep = slow_nms(bxs, [s for s, _, _ in cands], [c for _, _, c in cands], 0.8)[:7]
        assert res[b]["labels"].tolist() == [cands[i][2] for i in keep]
        assert torch.allclose(res[b]["scores"], torch.tensor([cands[i][0] for i in keep], dtype=F64), atol=1e-12)
        assert torch.allclose(res[b]["boxes"], torch.tensor([bxs[i] for i in keep], dtype=F64), atol=1e-9)
        suppressed = len(slow_nms(bxs, [s for s, _, _ in cands], [c for _, _, c in cands], 0.8)) < len(cands)
        assert suppressed  # the case exercises suppression
    full = NMSPostProcess()({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    assert all(len(r["scores"]) <= Q * C for r in full)


def test_nms_suppresses_duplicates_of_same_class_only():
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=F64)
    boxes = torch.cat([box, box + torch.tensor([[0.002, 0, 0, 0]], dtype=F64)])[None]
    logits = torch.tensor([[[3.0, -9.0], [2.0, 1.0]]], dtype=F64)
    res = NMSPostProcess(keep=10)({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[10, 10]]))[0]
    # IoU(q0, q1) ~ 0.98 > 0.8: (q1,c0) is suppressed by (q0,c0); class 1 is separate, where
    # (q1,c1) wins and suppresses (q0,c1)
    assert res["scores"].tolist() == pytest.approx([sig(3.0), sig(1.0)], abs=1e-12)
    assert res["labels"].tolist() == [0, 1]
    res = NMSPostProcess(iou_threshold=0.99)({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[10, 10]]))[0]
    assert res["labels"].tolist() == [0, 0, 1, 1]


def test_plain_postprocess():
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(1, 4, 3, generator=gen, dtype=F64)
    boxes = rand_boxes(4, gen)[None]
    res = PostProcess(topk=5)({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[50, 80]]))[0]
    cands = sorted([(sig(logits[0, q, c].item()), q, c) for q in range(4) for c in range(3)], key=lambda s: -s[0])[:5]
    assert res["labels"].tolist() == [c for _, _, c in cands]
    ref = [[v * s for v, s in zip(to_xyxy(tl(boxes[0, q])), (80, 50, 80, 50))] for _, q, _ in cands]
    assert torch.allclose(res["boxes"], torch.tensor(ref, dtype=F64), atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_criterion_on_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(0)
    out, _ = make_outputs(gen, with_dn=True)
    targets = make_targets(gen, [3, 1])

    def move(x):
        if isinstance(x, torch.Tensor):
            return x.detach().cuda()
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, list):
            return [move(v) for v in x]
        return x

    crit = _toy_criterion()
    torch.manual_seed(0)
    cpu = crit(out, targets, repeat3(targets))
    torch.manual_seed(0)
    gpu = crit(move(out), move(targets), move(repeat3(targets)))
    for k in cpu:
        assert gpu[k].device.type == "cuda"
        assert gpu[k].item() == pytest.approx(cpu[k].item(), rel=1e-6, abs=1e-9), k


# ----------------------------------------------------------------------------- official values
def test_criterion_matches_official_values():
    """Loss values and gradient sums of the official DAC-DETR ``SetCriterion`` (commit a186a20, run on
    CPU with its ``.cuda()`` calls removed) on the synthetic outputs of :func:`make_outputs`."""
    data = torch.load(Path(__file__).parent / "data" / "dacdetr" / "criterion_official.pt", weights_only=True)
    crit = _toy_criterion()
    for case in data["cases"]:
        gen = torch.Generator().manual_seed(case["seed"])
        out, leaves = make_outputs(gen, Q=30, max_gt=max(max(case["counts"]), 1), with_dn=case["with_dn"])
        targets = make_targets(gen, case["counts"])
        crit.train(case["mode"] == "train")
        torch.manual_seed(7)
        losses = crit(out, targets, repeat3(targets))
        assert set(losses) == set(case["losses"])
        for k, ref in case["losses"].items():
            assert losses[k].item() == pytest.approx(ref, rel=1e-12, abs=1e-12), k
        total = weighted_total(losses, crit.weight_dict)
        assert total.item() == pytest.approx(case["total"], rel=1e-12)
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
        sums = torch.tensor([[0.0, 0.0] if g is None else [g.sum().item(), g.abs().sum().item()] for g in grads], dtype=F64)
        assert torch.allclose(sums, case["grad_sums"], rtol=1e-10, atol=1e-12)

"""Contrastive denoising (CDN) queries for training, in the DINO formulation.

For a batch whose largest image has ``G_max`` boxes, ``dn_number`` (100) pairs of groups are
reduced to ``groups = max(1, 2 * dn_number // (2 * G_max))`` groups. Each group has ``G_max``
positive slots (boxes jittered by less than half their size) followed by ``G_max`` negative slots
(jittered by one to two half-sizes); label noise replaces a label by a random class with
probability ``label_noise_ratio / 2``. Queries are laid out as ``[dn slots ; matching queries]``
and the attention mask stops matching queries from seeing dn slots and dn groups from seeing
each other.

Everything is created on the device of the label embedding; the random draws use the default
generator of that device, in the official order (label-noise mask, new labels, box signs, box
magnitudes).
"""
from __future__ import annotations

import torch

from ..util.misc import inverse_sigmoid

__all__ = ["prepare_for_cdn", "dn_post_process"]


def prepare_for_cdn(dn_args, training, num_queries, num_classes, hidden_dim, label_enc):
    """Build the denoising queries.

    Args:
        dn_args: ``(targets, dn_number, label_noise_ratio, box_noise_scale)``; targets are dicts
            with ``labels`` (N,) int64 and ``boxes`` (N, 4) normalised cxcywh.
        training: no denoising queries outside training.
        num_queries: number of matching queries appended after the dn slots.
        num_classes: labels for the label noise are drawn from ``[0, num_classes)``.
        hidden_dim: width of the content queries.
        label_enc: ``nn.Embedding(num_classes + 1, hidden_dim)``.

    Returns:
        ``(input_query_label (B, pad, hidden_dim), input_query_bbox (B, pad, 4) as logits,
        attn_mask (pad + num_queries)^2 bool (True = blocked), dn_meta, dn_meta_cdecoder)`` with
        ``dn_meta = {"pad_size", "num_dn_group"}``; all None outside training.
    """
    if not training:
        return None, None, None, None, None
    targets, dn_number, label_noise_ratio, box_noise_scale = dn_args
    device = label_enc.weight.device
    embed_dtype = label_enc.weight.dtype

    counts = [int(t["labels"].numel()) for t in targets]
    batch_size = len(targets)
    max_gt = max(counts) if counts else 0
    groups = dn_number * 2
    if max_gt == 0:
        groups = 1
    elif groups >= 100:
        groups = groups // (max_gt * 2)
    elif groups < 1:
        groups = 1
    groups = max(groups, 1)

    labels = torch.cat([t["labels"].to(device) for t in targets]).long()
    boxes = torch.cat([t["boxes"].to(device) for t in targets])
    batch_idx = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])
    num_boxes = labels.numel()

    # 2 * groups copies: [pos group 0 | neg group 0 | pos group 1 | ...], each num_boxes long
    known_labels = labels.repeat(2 * groups)
    known_bid = batch_idx.repeat(2 * groups)
    known_boxes = boxes.repeat(2 * groups, 1)
    noisy_labels = known_labels.clone()
    noisy_boxes = known_boxes.clone()

    if label_noise_ratio > 0:
        p = torch.rand_like(noisy_labels.float())
        chosen = torch.nonzero(p < (label_noise_ratio * 0.5)).view(-1)
        new_label = torch.randint_like(chosen, 0, num_classes)
        noisy_labels.scatter_(0, chosen, new_label)

    pad_size = max_gt * 2 * groups
    positive_idx = (torch.arange(num_boxes, device=device).unsqueeze(0).repeat(groups, 1)
                    + (torch.arange(groups, device=device) * num_boxes * 2).unsqueeze(1)).flatten()
    negative_idx = positive_idx + num_boxes
    if box_noise_scale > 0:
        corners = torch.zeros_like(known_boxes)
        corners[:, :2] = known_boxes[:, :2] - known_boxes[:, 2:] / 2
        corners[:, 2:] = known_boxes[:, :2] + known_boxes[:, 2:] / 2
        half = torch.zeros_like(known_boxes)
        half[:, :2] = known_boxes[:, 2:] / 2
        half[:, 2:] = known_boxes[:, 2:] / 2
        sign = torch.randint_like(known_boxes, low=0, high=2, dtype=torch.float32) * 2.0 - 1.0
        magnitude = torch.rand_like(known_boxes)
        magnitude[negative_idx] += 1.0
        magnitude *= sign
        corners = corners + torch.mul(magnitude, half) * box_noise_scale
        corners = corners.clamp(min=0.0, max=1.0)
        noisy_boxes[:, :2] = (corners[:, :2] + corners[:, 2:]) / 2
        noisy_boxes[:, 2:] = corners[:, 2:] - corners[:, :2]

    label_embed = label_enc(noisy_labels.long())
    bbox_embed = inverse_sigmoid(noisy_boxes)

    input_query_label = torch.zeros(batch_size, pad_size, hidden_dim, dtype=embed_dtype, device=device)
    input_query_bbox = torch.zeros(batch_size, pad_size, 4, dtype=bbox_embed.dtype, device=device)
    if num_boxes:
        # slot of box j of an image in copy i: i * max_gt + j
        within = torch.cat([torch.arange(n, device=device) for n in counts])
        slots = torch.cat([within + max_gt * i for i in range(2 * groups)])
        input_query_label[(known_bid, slots)] = label_embed
        input_query_bbox[(known_bid, slots)] = bbox_embed

    size = pad_size + num_queries
    attn_mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    attn_mask[pad_size:, :pad_size] = True          # matching queries cannot see dn slots
    block = max_gt * 2
    for i in range(groups):                          # dn groups cannot see each other
        lo, hi = block * i, block * (i + 1)
        attn_mask[lo:hi, hi:pad_size] = True
        attn_mask[lo:hi, :lo] = True

    dn_meta = {"pad_size": pad_size, "num_dn_group": groups}
    return input_query_label, input_query_bbox, attn_mask, dn_meta, dict(dn_meta)


def dn_post_process(outputs_class, outputs_coord, dn_meta, aux_loss, _set_aux_loss, ca=False):
    """Split the dn slots off stacked per-layer outputs ``(layers, B, pad + Q, .)``.

    Returns ``(matching class, matching coord, dn_out)`` where ``dn_out`` holds the last layer's dn
    predictions (``pred_logits``/``pred_boxes``, or the ``_cdecoder`` keys when ``ca``) and, with
    ``aux_loss``, ``aux_outputs`` from ``_set_aux_loss`` for the other layers; ``dn_out`` is None
    when there are no dn slots.
    """
    if not dn_meta or dn_meta["pad_size"] <= 0:
        return outputs_class, outputs_coord, None
    pad = dn_meta["pad_size"]
    known_class, known_coord = outputs_class[:, :, :pad, :], outputs_coord[:, :, :pad, :]
    outputs_class, outputs_coord = outputs_class[:, :, pad:, :], outputs_coord[:, :, pad:, :]
    if ca:
        out = {"pred_logits_cdecoder": known_class[-1], "pred_boxes_cdecoder": known_coord[-1]}
    else:
        out = {"pred_logits": known_class[-1], "pred_boxes": known_coord[-1]}
    if aux_loss:
        out["aux_outputs"] = _set_aux_loss(known_class, known_coord)
    return outputs_class, outputs_coord, out

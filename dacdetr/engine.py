"""Training and evaluation loops of DAC-DETR (device-agnostic, with or without DDP)."""
import copy
import math

import torch

from common.train.step import AmpConfig, NonFiniteLossError, TrainStep, unwrap_model
from dacdetr.datasets.coco_eval import CocoEvaluator
from dacdetr.util.misc import MetricLogger, SmoothedValue, reduce_dict

__all__ = [
    "train_one_epoch", "evaluate", "NonFiniteLossError", "MetricLogger", "SmoothedValue",
    "balance_targets", "reduce_dict", "unwrap_model", "BALANCE_NUM_TRAIN", "BALANCE_NUM_EVAL",
]

BALANCE_NUM_TRAIN = 3  # one-to-many targets: every gt repeated 3x (normaliser 3 * num_gt)
BALANCE_NUM_EVAL = 2   # the official eval value (the C-decoder losses are only logged there)


def balance_targets(targets, balance_num):
    """Deep copy of ``targets`` with boxes/labels repeated ``balance_num`` times (one-to-many)."""
    out = copy.deepcopy(list(targets))
    for t in out:
        t["boxes"] = t["boxes"].repeat(balance_num, 1)
        t["labels"] = t["labels"].repeat(balance_num)
    return out


def _to_device(samples, targets, device):
    samples = samples.to(device, non_blocking=True)
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return samples, targets


def _amp(device, enabled):
    """The official ``--use_fp16``: fp16 autocast on CUDA, bf16 elsewhere."""
    device = torch.device(device)
    if not enabled:
        return AmpConfig()
    return AmpConfig(torch.float16 if device.type == "cuda" else torch.bfloat16, device.type)


# ---------------------------------------------------------------- training
def train_one_epoch(model, criterion, data_loader, optimizer, device, epoch, max_norm=0.0,
                    use_wandb=False, use_fp16=False, scaler=None, print_freq=10):
    """One pass over ``data_loader``; returns {meter: global average}.

    Loss = sum(loss_dict[k] * criterion.weight_dict[k]); the criterion is called as
    ``criterion(outputs, targets, balance_targets)`` with the one-to-many targets repeated
    ``BALANCE_NUM_TRAIN`` times. The step is :class:`common.train.step.TrainStep` (clip at ``max_norm``
    when > 0; the pre-clip grad norm is always logged). The non-finite decision is made on the loss
    reduced over processes for logging, so every process raises :class:`NonFiniteLossError` together,
    before any parameter is touched. As in the official code the meters are updated every step, so each
    step reads its reduced losses (one transfer, before the backward) and the grad norm from the device.
    """
    model.train()
    criterion.train()
    logger = MetricLogger(delimiter="  ")
    logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    logger.add_meter("grad_norm", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    header = f"Epoch: [{epoch}]"
    if use_fp16 and scaler is None:
        scaler = torch.amp.GradScaler(torch.device(device).type)
    step = TrainStep(model, optimizer, amp=_amp(device, use_fp16), scaler=scaler,
                     clip_grad=max_norm if max_norm > 0 else None, grad_norm=True)
    wandb = _maybe_wandb(use_wandb)
    n_steps = len(data_loader)

    for i, (samples, targets) in enumerate(logger.log_every(data_loader, print_freq, header)):
        samples, targets = _to_device(samples, targets, device)
        with step.forward(i, n_steps, epoch):
            outputs = model(samples, targets)
            loss_dict = criterion(outputs, targets, balance_targets(targets, BALANCE_NUM_TRAIN))
        weight_dict = criterion.weight_dict
        losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)

        reduced = reduce_dict(loss_dict)
        reduced_scaled = {k: v * weight_dict[k] for k, v in reduced.items() if k in weight_dict}
        # one device-to-host transfer for the logged values: total, scaled terms, unscaled terms
        total = sum(reduced_scaled.values())
        if not torch.is_tensor(total):
            total = torch.zeros((), device=samples.device)
        host = torch.stack([total.reshape(())]
                           + [v.reshape(()) for v in reduced_scaled.values()]
                           + [v.reshape(()) for v in reduced.values()]).tolist()
        loss_value = host[0]
        host_scaled = dict(zip(reduced_scaled, host[1:1 + len(reduced_scaled)]))
        host_reduced = dict(zip(reduced, host[1 + len(reduced_scaled):]))
        bad = sorted(k for k, v in host_reduced.items() if not math.isfinite(v))
        result = step.backward(losses, reduced=loss_value,
                               detail=f"Non-finite terms: {bad or 'none (the weighted sum overflowed)'}")

        logger.update(loss=loss_value, **host_scaled, **{f"{k}_unscaled": v for k, v in host_reduced.items()})
        if "class_error" in host_reduced:
            logger.update(class_error=host_reduced["class_error"])
        logger.update(lr=optimizer.param_groups[0]["lr"], grad_norm=result.grad_norm)
        if wandb is not None:
            wandb.log(host_reduced)

    logger.synchronize_between_processes()
    print("Averaged stats:", logger, flush=True)
    return {k: m.global_avg for k, m in logger.meters.items()}


def _maybe_wandb(use_wandb):
    if not use_wandb:
        return None
    try:
        import wandb
    except ImportError:
        print("warning: --use_wandb given but wandb is not installed; not logging to wandb")
        return None
    return wandb if getattr(wandb, "run", None) is not None else None


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, criterion, postprocessors, data_loader, base_ds, device, output_dir="",
             use_wandb=False, print_freq=10):
    """Run ``model(samples, None)``, log the criterion's losses, post-process with
    ``postprocessors["bbox"]`` (boxes in original image pixels) and evaluate with COCOeval.

    Returns (stats, coco_evaluator); ``stats["coco_eval_bbox"]`` is the 12-number COCO summary.
    """
    net = unwrap_model(model)
    # evaluate the one-to-one queries only (as the official code; no-op for models without them)
    saved = {}
    if hasattr(net, "num_queries_one2one") and hasattr(net, "num_queries"):
        saved["num_queries"] = net.num_queries
        net.num_queries = net.num_queries_one2one
        tr = getattr(net, "transformer", None)
        if tr is not None and hasattr(tr, "two_stage_num_proposals"):
            saved["two_stage_num_proposals"] = tr.two_stage_num_proposals
            tr.two_stage_num_proposals = net.num_queries
    model.eval()
    if criterion is not None:
        criterion.eval()

    logger = MetricLogger(delimiter="  ")
    logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    iou_types = tuple(k for k in ("bbox",) if k in postprocessors)
    evaluator = CocoEvaluator(base_ds, iou_types) if (base_ds is not None and iou_types) else None
    try:
        for samples, targets in logger.log_every(data_loader, print_freq, "Test:"):
            samples, targets = _to_device(samples, targets, device)
            outputs = model(samples, None)
            if criterion is not None:
                loss_dict = criterion(outputs, targets, balance_targets(targets, BALANCE_NUM_EVAL))
                wd = criterion.weight_dict
                reduced = reduce_dict(loss_dict)
                scaled = {k: v * wd[k] for k, v in reduced.items() if k in wd}
                logger.update(loss=sum(scaled.values()), **scaled,
                              **{f"{k}_unscaled": v for k, v in reduced.items()})
                if "class_error" in reduced:
                    logger.update(class_error=reduced["class_error"])
            orig_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)
            results = postprocessors["bbox"](outputs, orig_sizes)
            if evaluator is not None:
                evaluator.update({int(t["image_id"].item()): r for t, r in zip(targets, results)})
    finally:
        for k, v in saved.items():
            if k == "num_queries":
                net.num_queries = v
            else:
                net.transformer.two_stage_num_proposals = v

    logger.synchronize_between_processes()
    print("Averaged stats:", logger, flush=True)
    stats = {k: m.global_avg for k, m in logger.meters.items()}
    if evaluator is not None:
        evaluator.synchronize_between_processes()
        evaluator.accumulate()
        evaluator.summarize()
        stats["coco_eval_bbox"] = evaluator.coco_eval["bbox"].stats.tolist()
    wandb = _maybe_wandb(use_wandb)
    if wandb is not None and "coco_eval_bbox" in stats:
        wandb.log({"AP": stats["coco_eval_bbox"][0]})
    return stats, evaluator

"""Train / evaluate DAC-DETR on COCO.

Single process::

    python -m dacdetr.main --coco_path ./data/coco --output_dir out ...   (flags: see configs/*.sh)

Several processes (torchrun, ``python -m torch.distributed.launch``, or tools/run_dist_launch.sh)::

    torchrun --nproc_per_node 8 -m dacdetr.main ...
"""
import argparse
import copy
import datetime
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.checkpoint import (CheckpointError, TrainingCheckpointer, add_trust_arg, load_checkpoint, save_checkpoint,
                               seed_everything)
from common.config import dump_run_config
from common.data import ContiguousDistributedSampler
from common.distributed import add_dist_args, barrier, get_rank, init_distributed, is_main_process
from common.engine import add_compile_args, compile_args, prepare_model
from common.logging import setup_logging

__all__ = ["get_args_parser", "main", "build_param_groups", "resolve_device"]

logger = logging.getLogger(__name__)


def get_args_parser():
    """The official parser: same flags and defaults (plus --input_scale / --print_freq, and the
    launcher's --local_rank)."""
    p = argparse.ArgumentParser("Deformable DETR Detector", add_help=False)
    p.add_argument("--lr", default=2e-4, type=float)
    p.add_argument("--lr_backbone_names", default=["backbone.0"], type=str, nargs="+")
    p.add_argument("--lr_backbone", default=2e-5, type=float)
    p.add_argument("--lr_linear_proj_names", default=["reference_points", "sampling_offsets"],
                   type=str, nargs="+")
    p.add_argument("--lr_linear_proj_mult", default=0.1, type=float)
    p.add_argument("--batch_size", default=2, type=int)
    p.add_argument("--weight_decay", default=1e-4, type=float)
    p.add_argument("--epochs", default=50, type=int)
    p.add_argument("--lr_drop", default=40, type=int)
    p.add_argument("--lr_drop_epochs", default=None, type=int, nargs="+", help="unused (kept for compatibility)")
    p.add_argument("--clip_max_norm", default=0.1, type=float, help="gradient clipping max norm")
    p.add_argument("--sgd", action="store_true")

    # Deformable DETR variants
    p.add_argument("--with_box_refine", default=False, action="store_true")
    p.add_argument("--two_stage", default=False, action="store_true")

    # model
    p.add_argument("--frozen_weights", type=str, default=None,
                   help="Path to the pretrained model. If set, only the mask head will be trained")
    p.add_argument("--backbone", default="resnet50", type=str, help="Name of the convolutional backbone to use")
    p.add_argument("--dilation", action="store_true",
                   help="If true, we replace stride with dilation in the last convolutional block (DC5)")
    p.add_argument("--position_embedding", default="sine", type=str, choices=("sine", "learned"),
                   help="Type of positional embedding to use on top of the image features")
    p.add_argument("--position_embedding_scale", default=2 * np.pi, type=float, help="position / size * scale")
    p.add_argument("--num_feature_levels", default=4, type=int, help="number of feature levels")
    p.add_argument("--pretrained_backbone_path", default="./swin_tiny_patch4_window7_224.pkl", type=str)
    p.add_argument("--drop_path_rate", default=0.2, type=float)

    # transformer
    p.add_argument("--enc_layers", default=6, type=int, help="Number of encoding layers in the transformer")
    p.add_argument("--dec_layers", default=6, type=int, help="Number of decoding layers in the transformer")
    p.add_argument("--dim_feedforward", default=2048, type=int,
                   help="Intermediate size of the feedforward layers in the transformer blocks")
    p.add_argument("--hidden_dim", default=256, type=int, help="Size of the embeddings (dimension of the transformer)")
    p.add_argument("--dropout", default=0.1, type=float, help="Dropout applied in the transformer")
    p.add_argument("--nheads", default=8, type=int, help="Number of attention heads inside the transformer's attentions")
    p.add_argument("--num_queries_one2one", default=300, type=int, help="Number of query slots for one-to-one matching")
    p.add_argument("--num_queries_one2many", default=0, type=int, help="Number of query slots for one-to-many matching")
    p.add_argument("--dec_n_points", default=4, type=int)
    p.add_argument("--enc_n_points", default=4, type=int)
    p.add_argument("--mixed_selection", action="store_true", default=False)
    p.add_argument("--look_forward_twice", action="store_true", default=False)

    # segmentation
    p.add_argument("--masks", action="store_true", help="Train segmentation head if the flag is provided")

    # loss
    p.add_argument("--no_aux_loss", dest="aux_loss", action="store_false",
                   help="Disables auxiliary decoding losses (loss at each layer)")
    p.add_argument("--set_cost_class", default=2, type=float, help="Class coefficient in the matching cost")
    p.add_argument("--set_cost_bbox", default=5, type=float, help="L1 box coefficient in the matching cost")
    p.add_argument("--set_cost_giou", default=2, type=float, help="giou box coefficient in the matching cost")
    p.add_argument("--mask_loss_coef", default=1, type=float)
    p.add_argument("--dice_loss_coef", default=1, type=float)
    p.add_argument("--cls_loss_coef", default=1, type=float)
    p.add_argument("--bbox_loss_coef", default=5, type=float)
    p.add_argument("--giou_loss_coef", default=2, type=float)
    p.add_argument("--focal_alpha", default=0.25, type=float)

    # data
    p.add_argument("--dataset_file", default="coco")
    p.add_argument("--coco_path", default="./data/coco", type=str)
    p.add_argument("--coco_panoptic_path", type=str)
    p.add_argument("--remove_difficult", action="store_true")
    p.add_argument("--input_scale", default=1.0, type=float,
                   help="multiplies every augmentation size (1 = official 480-800/1333; 0.25 for the demo set)")

    p.add_argument("--output_dir", default="", help="path where to save, empty for no saving")
    p.add_argument("--device", default="cuda", help="device to use for training / testing (falls back to cpu)")
    p.add_argument("--seed", default=42, type=int)
    p.add_argument("--resume", default="", help="resume from checkpoint")
    add_trust_arg(p)
    p.add_argument("--start_epoch", default=0, type=int, metavar="N", help="start epoch")
    p.add_argument("--num_workers", default=2, type=int)
    p.add_argument("--cache_mode", default=False, action="store_true", help="whether to cache images on memory")
    p.add_argument("--print_freq", default=10, type=int, help="iterations between progress lines")

    p.add_argument("--eval", action="store_true")
    p.add_argument("--eval_in_training_set", default=False, action="store_true")
    p.add_argument("--topk", default=300, type=int, help="unused (the NMS post-processor keeps 300)")

    p.add_argument("--use_fp16", default=False, action="store_true")
    p.add_argument("--use_checkpoint", default=False, action="store_true")
    p.add_argument("--use_wandb", action="store_true", default=False)
    add_compile_args(p, underscore=True)
    add_dist_args(p)
    return p


def resolve_device(name):
    """``--device cuda`` (the official default) falls back to cpu, with a warning, without CUDA."""
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"--device {name} requested but CUDA is not available; using cpu", stacklevel=2)
        return "cpu"
    return name


def _matches(name, keywords):
    return any(k in name for k in keywords)


def build_param_groups(model, args):
    """Three AdamW/SGD groups: the rest (lr), backbone (lr_backbone), linear projections of the
    deformable attention (lr * lr_linear_proj_mult); substring matching on parameter names."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not _matches(n, args.lr_backbone_names)
                    and not _matches(n, args.lr_linear_proj_names)], "lr": args.lr},
        {"params": [p for n, p in named if _matches(n, args.lr_backbone_names)], "lr": args.lr_backbone},
        {"params": [p for n, p in named if _matches(n, args.lr_linear_proj_names)],
         "lr": args.lr * args.lr_linear_proj_mult},
    ]


def build_model(args):
    """The detector, criterion and post-processors (``dacdetr.models.build_model``)."""
    from dacdetr.models import build_model as _build

    return _build(args)


def _build_loaders(args, distributed):
    from dacdetr.datasets import build_dataset, collate_fn

    ds_train = build_dataset("train", args)
    if args.eval_in_training_set:
        print("eval in the training set")
        ds_val = build_dataset("train", args, eval_in_training_set=True)
    else:
        ds_val = build_dataset("val", args)
    if distributed:  # each rank a contiguous slice of the epoch's permutation, as officially
        s_train = ContiguousDistributedSampler(ds_train)
        s_val = ContiguousDistributedSampler(ds_val, shuffle=False)
    else:
        s_train = torch.utils.data.RandomSampler(ds_train)
        s_val = torch.utils.data.SequentialSampler(ds_val)
    pin = torch.device(args.device).type == "cuda"
    dl_train = DataLoader(ds_train, batch_sampler=torch.utils.data.BatchSampler(s_train, args.batch_size, drop_last=True),
                          collate_fn=collate_fn, num_workers=args.num_workers, pin_memory=pin)
    dl_val = DataLoader(ds_val, args.batch_size, sampler=s_val, drop_last=False, collate_fn=collate_fn,
                        num_workers=args.num_workers, pin_memory=pin)
    return ds_train, ds_val, s_train, dl_train, dl_val


def _resume(args, model_without_ddp, optimizer, lr_scheduler):
    """Official resume semantics: non-strict model load (ignoring *total_params/*total_ops),
    optimizer + scheduler restored (lr / initial_lr / step_size / gamma taken from the current
    flags), training continues at checkpoint epoch + 1."""
    ckpt = load_checkpoint(args.resume, map_location="cpu", trust=getattr(args, "trust_checkpoint", False))
    state = ckpt["model"]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    missing, unexpected = model_without_ddp.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not (k.endswith("total_params") or k.endswith("total_ops"))]
    if missing:  # the official report, on rank 0 (setup_logging)
        logger.info(f"Missing Keys: {missing}")
    if unexpected:
        logger.info(f"Unexpected Keys: {unexpected}")
    if not args.eval and all(k in ckpt for k in ("optimizer", "lr_scheduler", "epoch")):
        groups_now = copy.deepcopy(optimizer.param_groups)
        optimizer.load_state_dict(ckpt["optimizer"])
        for pg, old in zip(optimizer.param_groups, groups_now):
            pg["lr"] = old["lr"]
            pg["initial_lr"] = old["initial_lr"]
        lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        # the official code always lets the current --lr_drop override the resumed schedule
        lr_scheduler.step_size = args.lr_drop
        lr_scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        lr_scheduler.gamma = 0.1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the closed-form step(epoch) deprecation
            lr_scheduler.step(lr_scheduler.last_epoch)
        args.start_epoch = ckpt["epoch"] + 1
        return True
    return False


def main(args):
    from dacdetr.datasets import get_coco_api_from_dataset
    from dacdetr.datasets.coco import check_coco_root
    from dacdetr.engine import NonFiniteLossError, evaluate, train_one_epoch

    args.device = resolve_device(args.device)
    env = init_distributed(getattr(args, "local_rank", -1), device=args.device)
    args.distributed, args.rank, args.world_size = env.distributed, env.rank, env.world_size
    args.gpu = env.local_rank
    device = env.device
    if args.frozen_weights is not None:
        assert args.masks, "Frozen training is meant for segmentation only"
    if args.dataset_file == "coco":
        check_coco_root(args.coco_path, ("val",) if args.eval else ("train", "val"))
    log = setup_logging(rank=env.rank)  # rank 0 prints, as the official setup_for_distributed
    log(args)
    if args.output_dir and not args.eval and is_main_process():  # the resolved flags of a training run
        dump_run_config(args.output_dir, args)

    seed = args.seed + get_rank()
    seed_everything(seed)

    model, criterion, postprocessors = build_model(args)
    model.to(device)
    model_without_ddp = model
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log("number of params:", n_parameters)

    ds_train, ds_val, sampler_train, dl_train, dl_val = _build_loaders(args, env.distributed)

    param_dicts = build_param_groups(model_without_ddp, args)
    if args.sgd:
        optimizer = torch.optim.SGD(param_dicts, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(param_dicts, lr=args.lr, weight_decay=args.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_drop)

    # the official DDP wrap (device_ids=[gpu], every parameter used: find_unused_parameters=False)
    model, model_without_ddp = prepare_model(model, compile_args(args),
                                             env, find_unused_parameters=False)
    base_ds = get_coco_api_from_dataset(ds_val)

    if args.frozen_weights is not None:
        ckpt = load_checkpoint(args.frozen_weights, map_location="cpu", trust=getattr(args, "trust_checkpoint", False))
        model_without_ddp.detr.load_state_dict(ckpt["model"])

    output_dir = Path(args.output_dir) if args.output_dir else None
    scaler = torch.amp.GradScaler(device.type) if args.use_fp16 else None
    eval_kw = dict(output_dir=args.output_dir, use_wandb=args.use_wandb, print_freq=args.print_freq)

    if args.resume:
        _resume(args, model_without_ddp, optimizer, lr_scheduler)
        if not args.eval:  # check the resumed model once (weights alone too), as the official script does
            evaluate(model, criterion, postprocessors, dl_val, base_ds, device, **eval_kw)
    if args.eval:
        _, evaluator = evaluate(model, criterion, postprocessors, dl_val, base_ds, device, **eval_kw)
        if output_dir is not None and is_main_process() and evaluator is not None:
            save_checkpoint(evaluator.coco_eval["bbox"].eval, output_dir / "eval.pth")
        return evaluator

    log("Start training")
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        if env.distributed:
            sampler_train.set_epoch(epoch)
        try:
            train_stats = train_one_epoch(model, criterion, dl_train, optimizer, device, epoch,
                                          args.clip_max_norm, use_wandb=args.use_wandb,
                                          use_fp16=args.use_fp16, scaler=scaler, print_freq=args.print_freq)
        except NonFiniteLossError as e:
            last = output_dir / "checkpoint.pth" if output_dir is not None else None
            kept = f" The last good checkpoint is kept: {last}" if last is not None and last.exists() else ""
            print(f"{e}{kept}", file=sys.stderr, flush=True)
            sys.exit(1)
        lr_scheduler.step()
        if output_dir is not None and is_main_process():
            # official keys; args as a plain dict so the file loads with weights_only=True
            TrainingCheckpointer(output_dir, "checkpoint.pth", keys={"scheduler": "lr_scheduler"}).save(
                model=model_without_ddp, optimizer=optimizer, scheduler=lr_scheduler, epoch=epoch, rng=False,
                copies=[f"checkpoint{epoch:04}.pth"], extra={"args": args})
        barrier()

        test_stats, evaluator = evaluate(model, criterion, postprocessors, dl_val, base_ds, device, **eval_kw)
        log_stats = {**{f"train_{k}": v for k, v in train_stats.items()},
                     **{f"test_{k}": v for k, v in test_stats.items()},
                     "epoch": epoch, "n_parameters": n_parameters}
        if output_dir is not None and is_main_process():
            with (output_dir / "log.txt").open("a") as f:
                f.write(json.dumps(log_stats) + "\n")
            if evaluator is not None:
                names = ["latest.pth"] + ([f"{epoch:03}.pth"] if epoch % 50 == 0 else [])
                for name in names:
                    save_checkpoint(evaluator.coco_eval["bbox"].eval, output_dir / "eval" / name)

    log(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")
    return None


def cli(argv=None):
    parser = argparse.ArgumentParser("Deformable DETR training and evaluation script", parents=[get_args_parser()])
    args = parser.parse_args(argv)
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    try:
        main(args)
    except (FileNotFoundError, CheckpointError) as e:  # missing data / bad checkpoint: one message, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()

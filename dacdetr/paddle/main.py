"""Train / evaluate the Paddle DAC-DETR on COCO, with the flags of ``python -m dacdetr.main``.

::

    python -m dacdetr.paddle.main --eval --resume checkpoint0011.pth --coco_path data/coco <config flags>
    python -m dacdetr.paddle.main --coco_path data/coco --output_dir out <config flags>
    python -m paddle.distributed.launch --nproc_per_node 2 dacdetr/paddle/main.py <the same flags>

``--resume`` takes a Paddle checkpoint written here (``.safetensors``) or a PyTorch DAC-DETR checkpoint
(``.pth``, ours or the official release; read safely and converted with :mod:`dacdetr.paddle.convert`).
Recipe as the PyTorch script: AdamW (or SGD with ``--sgd``) with three parameter groups (the rest:
``--lr``; names containing ``--lr_backbone_names``: ``--lr_backbone``; names containing
``--lr_linear_proj_names``: ``--lr x --lr_linear_proj_mult``), weight decay on all, global-norm gradient
clipping ``--clip_max_norm``, StepLR (``--lr_drop``, gamma 0.1) per epoch, one-to-many targets
normalised by 3 x the boxes. Data: COCO with the official augmentation in NumPy / PIL
(:mod:`dacdetr.paddle.data`), evaluation with pycocotools through
:class:`dacdetr.datasets.coco_eval.CocoEvaluator`.

Checkpoints (``output_dir/checkpoint.safetensors`` and ``checkpoint{epoch:04}.safetensors``) hold only
arrays (model weights, optimizer accumulators) plus a JSON header (epoch, scheduler, optimizer scalars,
flags): loading them never runs code.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["main", "cli", "build_param_groups", "save_checkpoint", "load_checkpoint", "evaluate",
           "train_one_epoch", "collate"]

BALANCE_NUM = 3  # training: the one-to-many normaliser counts every gt 3 times
BALANCE_NUM_EVAL = 2  # evaluation (the criterion's losses are only logged there), as the PyTorch engine


def _paddle():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import paddle
    return paddle


def _matches(name, keywords):
    return any(k in name for k in keywords)


def build_param_groups(model, args):
    """The three official groups, as Paddle parameter groups whose ``learning_rate`` multiplies the
    scheduled ``--lr``: the rest x1, backbone x lr_backbone / lr, deformable offsets x lr_linear_proj_mult."""
    named = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    rest = [p for n, p in named if not _matches(n, args.lr_backbone_names) and not _matches(n, args.lr_linear_proj_names)]
    backbone = [p for n, p in named if _matches(n, args.lr_backbone_names)]
    proj = [p for n, p in named if _matches(n, args.lr_linear_proj_names)]
    groups = [{"params": rest, "learning_rate": 1.0}]
    if backbone:
        groups.append({"params": backbone, "learning_rate": args.lr_backbone / args.lr})
    if proj:
        groups.append({"params": proj, "learning_rate": args.lr_linear_proj_mult})
    return groups


def collate(batch):
    """[(image (3, H, W) array-like, target dict), ...] -> (NestedTensor, [target dicts of Paddle tensors])."""
    paddle = _paddle()
    from dacdetr.paddle.ops import nested_tensor_from_tensor_list

    images = [paddle.to_tensor(np.asarray(img, dtype=np.float32)) for img, _ in batch]
    targets = []
    for _, t in batch:
        out = {}
        for k, v in t.items():
            arr = np.asarray(v)
            out[k] = paddle.to_tensor(arr.astype(np.int64) if k == "labels" else arr)
        targets.append(out)
    return nested_tensor_from_tensor_list(images), targets


def _shard(order, rank, world):
    """This rank's contiguous slice of ``order`` (padded by repeating from the start to a multiple of
    ``world``): the split of the PyTorch script's ContiguousDistributedSampler."""
    if world <= 1:
        return order
    per = -(-len(order) // world)
    order = list(order)
    while len(order) < per * world:
        order += order[:per * world - len(order)]
    return np.asarray(order[rank * per:(rank + 1) * per], dtype=np.int64)


def _batches(dataset, batch_size, shuffle, rng, drop_last, rank=0, world=1):
    """Batches of this rank's share of the dataset; ``rng`` (the same on every rank) draws the order."""
    order = rng.permutation(len(dataset)) if shuffle else np.arange(len(dataset))
    order = _shard(order, rank, world)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for i in range(0, stop, batch_size):
        yield collate([dataset[int(j)] for j in order[i:i + batch_size]])


def _balance(targets, times=BALANCE_NUM):
    paddle = _paddle()
    return [{k: paddle.concat([v] * times) if k in ("labels", "boxes") else v for k, v in t.items()}
            for t in targets]


def _world():
    """(rank, world size) of this process (0, 1 unless launched with several processes)."""
    paddle = _paddle()
    if paddle.distributed.is_initialized():
        return paddle.distributed.get_rank(), paddle.distributed.get_world_size()
    return 0, 1


def _mean_over_ranks(values):
    """{name: float} averaged over the processes (keys in sorted order on every rank)."""
    paddle = _paddle()
    _, world = _world()
    if world <= 1 or not values:
        return dict(values)
    names = sorted(values)
    t = paddle.to_tensor(np.asarray([values[k] for k in names], np.float64))
    paddle.distributed.all_reduce(t)
    return dict(zip(names, (t.numpy() / world).tolist()))


def _gather_objects(obj):
    """Every rank's ``obj`` (a one-element list in a single process)."""
    paddle = _paddle()
    if _world()[1] <= 1:
        return [obj]
    out = []
    paddle.distributed.all_gather_object(out, obj)
    return out


class _Averages:
    """Running means of named scalars (one value per batch)."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def update(self, **values):
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self):
        return {k: self.sums[k] / self.counts[k] for k in self.sums}




# ----------------------------------------------------------------------------- checkpoints
def _param_renamer(model, to_structured):
    """Paddle keys optimizer state by the parameters' generated names (``linear_12.w_0_moment1_0``), which
    depend on how many layers a process built before; checkpoints use the structured names instead
    (``@transformer.enc_output.weight_moment1_0``). Returns a key-renaming function."""
    pairs = [(p.name, "@" + n) for n, p in model.named_parameters()]
    if not to_structured:
        pairs = [(b, a) for a, b in pairs]
    pairs.sort(key=lambda ab: -len(ab[0]))  # longest prefix first
    table = dict(pairs)

    def rename(key):
        if key in table:
            return table[key]
        for old, new in pairs:
            if key.startswith(old + "_"):
                return new + key[len(old):]
        return key

    return rename

def save_checkpoint(path, model, optimizer=None, scheduler=None, epoch=None, args=None):
    """Arrays in a safetensors file; epoch / scheduler / optimizer scalars / flags in its JSON header."""
    from safetensors.numpy import save_file

    from common.checkpoint import atomic_write

    paddle = _paddle()
    tensors = {"model." + k: np.ascontiguousarray(v.numpy()) for k, v in model.state_dict().items()}
    extra = {}
    if optimizer is not None:
        to_struct = _param_renamer(model, to_structured=True)
        for k, v in optimizer.state_dict().items():
            if isinstance(v, paddle.Tensor):
                tensors["optimizer." + to_struct(k)] = np.ascontiguousarray(v.numpy())
            elif k == "master_weights":
                for mk, mv in v.items():
                    tensors["optimizer.master_weights." + to_struct(mk)] = np.ascontiguousarray(mv.numpy())
            else:
                extra[k] = v
    meta = {"epoch": epoch, "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
            "optimizer": extra,
            "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))}
            if args is not None else None}
    header = {"layerzoo": json.dumps(meta, default=float)}
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    atomic_write(path, lambda f: f.write(tmp.read_bytes()))
    tmp.unlink()


def load_checkpoint(path):
    """(model state of Paddle tensors, optimizer state or None, header dict). ``.pth`` files are PyTorch
    checkpoints: read safely and converted (no optimizer state)."""
    paddle = _paddle()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if p.suffix in (".pth", ".pt", ".bin") or p.name.endswith(".pth.tar"):
        from dacdetr.paddle.convert import load_torch_file, torch_to_paddle

        state = torch_to_paddle(load_torch_file(str(p)))
        if state.report.get("unused"):
            print(f"{path}: keys without a conversion rule (not loaded): {state.report['unused'][:20]}")
        return dict(state), None, {}
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("layerzoo", "{}"))
        arrays = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable checkpoint ({e})") from None
    model = {k[len("model."):]: paddle.to_tensor(v) for k, v in arrays.items() if k.startswith("model.")}
    if not model:
        raise ValueError(f"{path} holds no model weights (keys 'model.*')")
    opt = None
    if any(k.startswith("optimizer.") for k in arrays):
        opt = dict(meta.get("optimizer") or {})
        masters = {}
        for k, v in arrays.items():
            if k.startswith("optimizer.master_weights."):
                masters[k[len("optimizer.master_weights."):]] = paddle.to_tensor(v)
            elif k.startswith("optimizer."):
                opt[k[len("optimizer."):]] = paddle.to_tensor(v)
        if masters:
            opt["master_weights"] = masters
    return model, opt, meta


# ----------------------------------------------------------------------------- loops
def train_one_epoch(model, criterion, batches, optimizer, epoch, print_freq=10, scaler=None, amp=False):
    """One pass over ``batches``. ``amp``: forward and criterion under ``paddle.amp.auto_cast`` (float16,
    level O1; the deformable attention stays float32); ``scaler``: a ``paddle.amp.GradScaler`` that scales
    the loss for the backward and unscales the gradients before the optimizer's clipping and step (a step
    with non-finite gradients is skipped and the scale backs off), as the PyTorch engine's GradScaler."""
    paddle = _paddle()
    model.train()
    criterion.train()
    from dacdetr.paddle.criterion import weighted_total

    _, world = _world()
    sums, n, start = {}, 0, time.time()
    for it, (samples, targets) in enumerate(batches):
        with paddle.amp.auto_cast(enable=amp, level="O1", dtype="float16"):
            outputs = model(samples, targets)
            loss_dict = criterion(outputs, targets, _balance(targets))
        loss = weighted_total(loss_dict, criterion.weight_dict)
        value = float(loss)
        if world > 1:  # every process stops together (no rank left waiting in a collective)
            bad = paddle.to_tensor([0.0 if math.isfinite(value) else 1.0])
            paddle.distributed.all_reduce(bad)
            if float(bad.numpy()[0]) > 0 and math.isfinite(value):
                raise FloatingPointError("Loss is not finite on another process, stopping training")
        if not math.isfinite(value):
            raise FloatingPointError(f"Loss is {value}, stopping training ({ {k: float(v) for k, v in loss_dict.items()} })")
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # unscales first; the optimizer's grad_clip then sees true gradients
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.clear_grad()
        n += 1
        sums["loss"] = sums.get("loss", 0.0) + value
        for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_one2one", "class_error"):
            if k in loss_dict:
                sums[k] = sums.get(k, 0.0) + float(loss_dict[k])
        if it % print_freq == 0:
            print(f"Epoch: [{epoch}] [{it}] loss: {value:.4f} lr: {optimizer.get_lr():.6f} "
                  f"({time.time() - start:.1f} s)", flush=True)
    return _mean_over_ranks({k: v / max(n, 1) for k, v in sums.items()})


def evaluate(model, criterion, postprocessors, dataset, base_ds, batch_size, print_freq=10):
    """Detections of ``model(samples)`` (boxes in original pixels) scored with COCOeval, and, when
    ``criterion`` is given, its losses on the same outputs (eval mode: no denoising terms; one-to-many
    targets repeated ``BALANCE_NUM_EVAL`` times), logged under the PyTorch engine's names: ``loss`` (the
    weighted total), each weighted term under its own name, every term unweighted as ``{name}_unscaled``
    and ``class_error``, each averaged over the batches.

    With several processes each evaluates its contiguous share of the images; the losses are averaged
    over the processes and the detections of all of them are merged into one COCO evaluation.

    Returns ``(stats, evaluator)``; ``stats["coco_eval_bbox"]`` is the 12-number COCO summary."""
    import torch

    from dacdetr.datasets.coco_eval import CocoEvaluator

    from dacdetr.paddle.criterion import weighted_total

    paddle = _paddle()
    model.eval()
    if criterion is not None:
        criterion.eval()
    evaluator = CocoEvaluator(base_ds, ("bbox",))
    averages = _Averages()
    start = time.time()
    with paddle.no_grad():
        rank, world = _world()
        for it, (samples, targets) in enumerate(_batches(dataset, batch_size, False, None, False, rank, world)):
            outputs = model(samples)
            if criterion is not None:
                loss_dict = criterion(outputs, targets, _balance(targets, BALANCE_NUM_EVAL))
                wd = criterion.weight_dict
                scaled = {k: float(v) * wd[k] for k, v in loss_dict.items() if k in wd}
                averages.update(loss=sum(scaled.values()), **scaled,
                                **{f"{k}_unscaled": float(v) for k, v in loss_dict.items()})
                if "class_error" in loss_dict:
                    averages.update(class_error=float(loss_dict["class_error"]))
            sizes = paddle.stack([t["orig_size"] for t in targets])
            results = postprocessors["bbox"](outputs, sizes)
            evaluator.update({int(t["image_id"].numpy().reshape(-1)[0]): {k: torch.from_numpy(v.numpy())
                                                                          for k, v in r.items()}
                              for t, r in zip(targets, results)})
            if it % print_freq == 0:
                print(f"Test: [{it}] ({time.time() - start:.1f} s)", flush=True)
    stats = _mean_over_ranks(averages.means())
    print("Averaged stats:", "  ".join(f"{k}: {v:.4f}" for k, v in stats.items()), flush=True)
    evaluator.synchronize_between_processes(gather=_gather_objects)
    evaluator.accumulate()
    evaluator.summarize()
    stats["coco_eval_bbox"] = np.asarray(evaluator.coco_eval["bbox"].stats).tolist()
    return stats, evaluator


def _device(name):
    paddle = _paddle()
    if str(name).startswith("cuda") or str(name).startswith("gpu"):
        if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
            return "gpu"
        warnings.warn(f"--device {name} requested but no GPU is available to Paddle; using cpu", stacklevel=2)
    return "cpu"


def _init_distributed(args):
    """Join the process group when started by ``python -m paddle.distributed.launch`` (or
    ``paddle.distributed.spawn``) with several processes: NCCL on GPUs, gloo on the CPU. Sets
    ``args.distributed`` / ``rank`` / ``world_size``; only rank 0 prints. Returns (rank, world size)."""
    paddle = _paddle()
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if world > 1 and not paddle.distributed.is_initialized():
        paddle.distributed.init_parallel_env()
    rank, world = _world()
    args.distributed, args.rank, args.world_size = world > 1, rank, world
    if rank != 0:  # the official setup_for_distributed: the other processes stay quiet
        sys.stdout = open(os.devnull, "w")
    return rank, world


def main(args):
    paddle = _paddle()
    from dacdetr.datasets.coco import check_coco_root
    from dacdetr.paddle import build_model
    from dacdetr.paddle.convert import load_into
    from dacdetr.paddle.data import build as build_dataset

    device = _device(args.device)
    if args.use_fp16 and not args.eval and device == "cpu":
        raise ValueError("--use_fp16: Paddle's mixed precision (paddle.amp.auto_cast) runs on GPUs only; on the CPU "
                         "it has no effect (PaddlePaddle 3.3.1). Train without --use_fp16, or on a GPU "
                         "(paddlepaddle-gpu, --device cuda)")
    paddle.set_device(device)
    rank, world = _init_distributed(args)
    check_coco_root(args.coco_path, ("val",) if args.eval else ("train", "val"))
    paddle.seed(args.seed + rank)  # CDN noise / one-to-many subsets / augmentation differ per process
    np.random.seed(args.seed + rank)
    random.seed(args.seed + rank)
    rng = np.random.RandomState(args.seed)  # the data order: the same permutation on every process
    print(args)
    model, criterion, postprocessors = build_model(args)
    n_parameters = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    print("number of params:", n_parameters)
    ds_val = build_dataset("train" if args.eval_in_training_set else "val", args,
                           eval_in_training_set=args.eval_in_training_set)
    base_ds = ds_val.coco

    scheduler = paddle.optimizer.lr.StepDecay(learning_rate=args.lr, step_size=args.lr_drop, gamma=0.1)
    clip = paddle.nn.ClipGradByGlobalNorm(args.clip_max_norm) if args.clip_max_norm > 0 else None
    groups = build_param_groups(model, args)
    if args.sgd:
        optimizer = paddle.optimizer.Momentum(learning_rate=scheduler, momentum=0.9, parameters=groups,
                                              weight_decay=args.weight_decay, grad_clip=clip)
    else:
        optimizer = paddle.optimizer.AdamW(learning_rate=scheduler, parameters=groups,
                                           weight_decay=args.weight_decay, grad_clip=clip)

    if args.resume:
        state, opt_state, meta = load_checkpoint(args.resume)
        missing, unexpected, shapes = load_into(model, state, strict=False)
        if shapes:
            raise ValueError(f"{args.resume}: shapes do not fit the model: {shapes[:10]}")
        if missing:
            print(f"Missing Keys: {missing}")
        if unexpected:
            print(f"Unexpected Keys: {unexpected}")
        if not args.eval and opt_state is not None and meta.get("epoch") is not None:
            from_struct = _param_renamer(model, to_structured=False)
            opt_state = {from_struct(k) if isinstance(v, paddle.Tensor) else k: v for k, v in opt_state.items()}
            if "master_weights" in opt_state:
                opt_state["master_weights"] = {from_struct(k): v for k, v in opt_state["master_weights"].items()}
            optimizer.set_state_dict(opt_state)
            sched = dict(meta.get("lr_scheduler") or {})
            scheduler.set_state_dict(sched)
            scheduler.step_size, scheduler.gamma, scheduler.base_lr = args.lr_drop, 0.1, args.lr
            scheduler.step(scheduler.last_epoch)  # the current --lr / --lr_drop decide the schedule
            args.start_epoch = int(meta["epoch"]) + 1
        if not args.eval:  # check the resumed weights once before training, as the PyTorch script does
            evaluate(model, criterion, postprocessors, ds_val, base_ds, args.batch_size, args.print_freq)
    if args.eval:
        _, evaluator = evaluate(model, criterion, postprocessors, ds_val, base_ds, args.batch_size,
                                args.print_freq)
        return evaluator

    ds_train = build_dataset("train", args)
    output_dir = Path(args.output_dir) if args.output_dir else None
    # --use_fp16 (GPU only, checked above): float16 autocast + a GradScaler with torch.amp.GradScaler's
    # defaults (initial scale 2**16, x2 after 2000 clean steps, x0.5 after each overflow); not checkpointed
    scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 16, incr_ratio=2.0, decr_ratio=0.5,
                                   incr_every_n_steps=2000, decr_every_n_nan_or_inf=1) if args.use_fp16 else None
    # several processes: gradients averaged by DataParallel (weights broadcast from rank 0 when wrapped);
    # the bare model is saved and evaluated
    train_model = paddle.DataParallel(model) if world > 1 else model
    print("Start training")
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        batches = _batches(ds_train, args.batch_size, True, rng, True, rank, world)
        try:
            train_stats = train_one_epoch(train_model, criterion, batches, optimizer, epoch, args.print_freq,
                                          scaler=scaler, amp=scaler is not None)
        except FloatingPointError as e:
            last = output_dir / "checkpoint.safetensors" if output_dir is not None else None
            kept = f" The last good checkpoint is kept: {last}" if last is not None and last.exists() else ""
            print(f"{e}{kept}", file=sys.stderr, flush=True)
            sys.exit(1)
        scheduler.step()
        if output_dir is not None and rank == 0:
            for name in ("checkpoint.safetensors", f"checkpoint{epoch:04}.safetensors"):
                save_checkpoint(output_dir / name, model, optimizer, scheduler, epoch, args)
        if world > 1:
            paddle.distributed.barrier()
        test_stats, _ = evaluate(model, criterion, postprocessors, ds_val, base_ds, args.batch_size,
                                 args.print_freq)
        if output_dir is not None and rank == 0:
            stats = {**{f"train_{k}": v for k, v in train_stats.items()},
                     **{f"test_{k}": v for k, v in test_stats.items()},
                     "epoch": epoch, "n_parameters": n_parameters}
            with (output_dir / "log.txt").open("a") as f:
                f.write(json.dumps(stats) + "\n")
    print(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")
    return None


def cli(argv=None):
    from dacdetr.main import get_args_parser

    parser = argparse.ArgumentParser("DAC-DETR (PaddlePaddle) training and evaluation", parents=[get_args_parser()])
    args = parser.parse_args(argv)
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    from common.checkpoint import CheckpointError

    try:
        main(args)
    except (FileNotFoundError, ValueError, CheckpointError) as e:  # missing data / unreadable checkpoint: one message, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()

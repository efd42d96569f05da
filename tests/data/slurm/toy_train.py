"""A tiny resumable "training" script for the launcher tests (no model, only the plumbing).

Each epoch: gloo all-reduce of (rank + 1) across the world, optional sleep, then rank 0 appends one
row to <checkpoint>/log.txt and rewrites <checkpoint>/checkpoint.pth.tar (a JSON file). --resume
restores the epoch counter and rewrites the log to exactly the checkpoint's epochs.
"""
import argparse
import json
import os
import time


def get_parser():
    p = argparse.ArgumentParser(description="toy resumable training")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per epoch")
    p.add_argument("-c", "--checkpoint", default="checkpoint")
    p.add_argument("--resume", default="")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--fail", action="store_true", help="exit with code 3 (error path test)")
    return p


def main():
    args = get_parser().parse_args()
    if args.fail:
        raise SystemExit(3)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dist = None
    if world > 1:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")  # env:// from MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE
    os.makedirs(args.checkpoint, exist_ok=True)
    ckpt_file = os.path.join(args.checkpoint, "checkpoint.pth.tar")
    log_file = os.path.join(args.checkpoint, "log.txt")
    start = 0
    rows = []
    if args.resume:
        with open(args.resume) as f:
            state = json.load(f)
        start, rows = state["epoch"], state["rows"]
        print(f"resumed from {args.resume} at epoch {start}", flush=True)
    for epoch in range(start, args.epochs):
        total = float(rank + 1)
        if dist is not None:
            t = torch.tensor([total])
            dist.all_reduce(t)
            total = float(t.item())
        time.sleep(args.sleep)
        rows.append(f"{epoch}\t{args.lr}\t{total}\t{world}")
        print(f"epoch {epoch} sum {total}", flush=True)
        if rank == 0:
            with open(log_file + ".tmp", "w") as f:
                f.write("Epoch\tLR\tSum\tWorld\n" + "".join(r + "\n" for r in rows))
            os.replace(log_file + ".tmp", log_file)
            with open(ckpt_file + ".tmp", "w") as f:
                json.dump({"epoch": epoch + 1, "rows": rows}, f)
            os.replace(ckpt_file + ".tmp", ckpt_file)
    if dist is not None:
        dist.destroy_process_group()
    print("Best acc: 0.0", flush=True)


if __name__ == "__main__":
    main()

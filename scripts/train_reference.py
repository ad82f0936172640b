#!/usr/bin/env python3
"""PyTorch reference run of decomp's `he2016` recipe on CIFAR-10 (issue 14): the same model,
optimizer, schedule, augmentation, split sizes and data files as

    decomp train --arch resnet20 --dataset cifar10 --recipe he2016 --epochs 40 --eval-test

so that decomp's test accuracy and wall time can be put beside PyTorch's.

- Data: the official binary CIFAR-10 layout (data_batch_1..5.bin, test_batch.bin) in
  --data (e.g. ../shared/datasets/cifar-10-batches-bin); normalization as decomp's
  (mean 0.4914/0.4822/0.4465, std 0.2470/0.2435/0.2616).
- Split: 10% of the training images held out per class (4,500 + 500 per class), chosen with
  --seed; decomp draws its held-out images with its own generator, so the two runs hold out
  different (equally sized, stratified) sets; the test split is the same 10,000 images.
- Model: ResNet-20 (option-A shortcuts, BatchNorm), PyTorch's default initialization.
- Recipe: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128 (last partial batch kept),
  lr x0.1 from 50% and x0.01 from 75% of the epochs (decomp's milestones, epoch e counted from
  0: factor applies when e / epochs >= milestone); 4-pixel black pad + random crop + flip.
- Selection: the epoch with the best validation accuracy is evaluated on the test split.

Resumable: every epoch writes <out>/last.pt (model, optimizer, RNG state); --max-epochs-now N
stops after N epochs of this invocation; rerun the same command to continue. Writes
<out>/metrics.json (per epoch: lr, losses, accuracies, wall seconds, images/s; the best
epoch and its test accuracy; threads, versions).

    python scripts/train_reference.py --data ../shared/datasets/cifar-10-batches-bin \\
        --epochs 40 --out runs/train/torch-he2016-r20-40ep [--max-epochs-now 10]
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_frameworks import torch_resnet  # noqa: E402

MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32).reshape(1, 3, 1, 1)


def read_batches(folder, names):
    images, labels = [], []
    for name in names:
        path = os.path.join(folder, name)
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % 3073:
            raise SystemExit(f"{path}: {raw.size} bytes, expected a multiple of 3073 (CIFAR-10 records)")
        rec = raw.reshape(-1, 3073)
        labels.append(rec[:, 0].astype(np.int64))
        images.append(rec[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def normalize(u8):
    return (u8.astype(np.float32) / 255.0 - MEAN) / STD


def augment(u8, rng):
    """4-pixel black pad + random 32x32 crop + horizontal flip, per image, in pixel space."""
    n = u8.shape[0]
    padded = np.zeros((n, 3, 40, 40), dtype=np.uint8)
    padded[:, :, 4:36, 4:36] = u8
    oy = rng.integers(0, 9, n)
    ox = rng.integers(0, 9, n)
    out = np.empty_like(u8)
    flip = rng.random(n) < 0.5
    for i in range(n):
        crop = padded[i, :, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        out[i] = crop[:, :, ::-1] if flip[i] else crop
    return out


def evaluate(model, torch, x_u8, y, batch=500):
    model.eval()
    right, loss = 0, 0.0
    with torch.inference_mode():
        for s in range(0, len(y), batch):
            xb = torch.from_numpy(normalize(x_u8[s:s + batch]))
            yb = torch.from_numpy(y[s:s + batch])
            logits = model(xb)
            loss += torch.nn.functional.cross_entropy(logits, yb, reduction="sum").item()
            right += (logits.argmax(1) == yb).sum().item()
    return loss / len(y), right / len(y)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with the CIFAR-10 binary batches")
    p.add_argument("--out", required=True, help="run folder (created; resumed when it holds last.pt)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--max-epochs-now", type=int, help="stop after this many epochs of this invocation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--limit", type=int, help="only the first N training images (smoke tests)")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    x_all, y_all = read_batches(args.data, [f"data_batch_{i}.bin" for i in range(1, 6)])
    x_test, y_test = read_batches(args.data, ["test_batch.bin"])
    split = np.random.default_rng(args.seed)
    is_val = np.zeros(len(y_all), dtype=bool)
    for c in range(10):
        pos = np.flatnonzero(y_all == c)
        is_val[split.permutation(pos)[: round(len(pos) * 0.1)]] = True
    x_tr, y_tr, x_val, y_val = x_all[~is_val], y_all[~is_val], x_all[is_val], y_all[is_val]

    if args.limit:
        x_tr, y_tr = x_tr[: args.limit], y_tr[: args.limit]
    # Threads change the timing only (the recipe, and so the resumed run, stay the same): each
    # epoch records its own thread count instead.
    config = {k: v for k, v in vars(args).items() if k not in ("max_epochs_now", "out", "threads")}
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "last.pt")
    torch.manual_seed(args.seed)
    model = torch_resnet(20, True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    state = {"epochs": [], "best": None, "rng": np.random.default_rng(args.seed + 1).bit_generator.state}
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        ck["config"].pop("threads", None)
        if ck["config"] != config:
            raise SystemExit(f"{ckpt_path}: written with {ck['config']}, this run asks {config}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["torch_rng"])
        state = ck["state"]
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    done_now = 0
    for epoch in range(len(state["epochs"]), args.epochs):
        if args.max_epochs_now is not None and done_now >= args.max_epochs_now:
            break
        progress = epoch / args.epochs
        lr = 0.1 * (0.01 if progress + 1e-9 >= 0.75 else 0.1 if progress + 1e-9 >= 0.5 else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        order = rng.permutation(len(y_tr))
        t0 = time.perf_counter()
        seen, loss_sum, right = 0, 0.0, 0
        for s in range(0, len(order), args.batch):
            idx = order[s:s + args.batch]
            xb = torch.from_numpy(normalize(augment(x_tr[idx], rng)))
            yb = torch.from_numpy(y_tr[idx])
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = torch.nn.functional.cross_entropy(logits, yb)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            right += (logits.argmax(1) == yb).sum().item()
            seen += len(idx)
        wall = time.perf_counter() - t0
        val_loss, val_acc = evaluate(model, torch, x_val, y_val)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / seen, "train_acc": right / seen,
               "val_loss": val_loss, "val_acc": val_acc, "wall_s": wall, "images_per_s": seen / wall,
               "threads": args.threads}
        state["epochs"].append(row)
        print(json.dumps(row), flush=True)
        if state["best"] is None or val_acc > state["best"]["val_acc"]:
            state["best"] = {"epoch": epoch + 1, "val_acc": val_acc}
            torch.save(model.state_dict(), os.path.join(args.out, "best.pt"))
        state["rng"] = rng.bit_generator.state
        tmp = ckpt_path + ".tmp"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "torch_rng": torch.get_rng_state(), "state": state,
                    "config": config}, tmp)
        os.replace(tmp, ckpt_path)
        done_now += 1
    summary = {"recipe": "he2016", "epochs": args.epochs, "epochs_done": len(state["epochs"]),
               "seed": args.seed, "torch": torch.__version__,
               "train_images": int(len(y_tr)), "val_images": int(len(y_val)),
               "best": state["best"], "total_wall_s": sum(r["wall_s"] for r in state["epochs"]),
               "epochs_log": state["epochs"]}
    if len(state["epochs"]) == args.epochs:
        best = torch_resnet(20, True)
        best.load_state_dict(torch.load(os.path.join(args.out, "best.pt")))
        test_loss, test_acc = evaluate(best, torch, x_test, y_test)
        summary["test"] = {"loss": test_loss, "top1": test_acc, "images": int(len(y_test))}
        print(f"test top-1 of the best validation epoch ({state['best']['epoch']}): {100 * test_acc:.2f}%")
    tmp = os.path.join(args.out, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, os.path.join(args.out, "metrics.json"))


if __name__ == "__main__":
    main()

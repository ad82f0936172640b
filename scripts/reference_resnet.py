#!/usr/bin/env python3
"""Independent numpy (float64) reference forward pass of the akamaster CIFAR-10
ResNet (He et al. 2016, CIFAR variant, option-A shortcuts), used to produce
logit fixtures for cross-checking the Rust CNN executor.

No torch needed: weights come from scripts/torch_legacy.py (a torch-free
legacy-checkpoint reader). Everything is computed in float64 (weights are
upcast from float32; conv2d = im2col + matmul).

Model (github.com/akamaster/pytorch_resnet_cifar10, resnet.py):
  conv1 3x3/16 s1 p1 (no bias) -> bn1 -> relu
  layer1, layer2, layer3: n = (depth-2)/6 BasicBlocks of 16/32/64 planes,
     first block of layer2/layer3 has stride 2
  BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))
     shortcut = identity, or when stride!=1 or in_planes!=planes (option A):
     x[:, :, ::2, ::2] zero-padded by planes//4 channels on each side
  global average pool (8x8) -> linear 64->10
  BatchNorm eval: (x - running_mean) / sqrt(running_var + 1e-5) * weight + bias

Input: CIFAR-10 binary records (3073 bytes: label, 1024 R, 1024 G, 1024 B,
row-major 32x32), scaled to [0,1], normalized with mean (0.485,0.456,0.406),
std (0.229,0.224,0.225).

Usage (from the repository root):
  # logits fixture for the first N records
  python3 scripts/reference_resnet.py \
      --weights /work/shared/models/cifar10/resnet20-12fca82f.th --depth 20 \
      --data /work/shared/datasets/cifar-10-train-first4000-lossless/train_first4000.bin \
      --count 32 --out scripts/fixtures/resnet20_first32_logits.json
  # top-1 accuracy over all records (or the first --count records), batched
  python3 scripts/reference_resnet.py --weights <file.th> --depth 56 \
      --data <file.bin> --check-accuracy [--count 500] [--batch 100]

--depth may be omitted; it is then inferred from the checkpoint's layers.
"""

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_legacy import load_state_dict  # noqa: E402

RECORD_BYTES = 3073
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float64)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float64)
BN_EPS = 1e-5


# ----------------------------------------------------------------- data ----

def read_records(path, count=None, start=0):
    """Return (images uint8 [N,3,32,32], labels int64 [N])."""
    size = os.path.getsize(path)
    if size % RECORD_BYTES:
        raise ValueError("%s: size %d is not a multiple of %d" % (path, size, RECORD_BYTES))
    total = size // RECORD_BYTES
    if count is None:
        count = total - start
    if start + count > total:
        raise ValueError("%s holds %d records, asked for %d..%d" % (path, total, start, start + count))
    with open(path, "rb") as f:
        f.seek(start * RECORD_BYTES)
        raw = np.frombuffer(f.read(count * RECORD_BYTES), dtype=np.uint8)
    raw = raw.reshape(count, RECORD_BYTES)
    labels = raw[:, 0].astype(np.int64)
    images = raw[:, 1:].reshape(count, 3, 32, 32)
    return images, labels


def num_records(path):
    return os.path.getsize(path) // RECORD_BYTES


def preprocess(images_u8):
    x = images_u8.astype(np.float64) / 255.0
    return (x - MEAN[None, :, None, None]) / STD[None, :, None, None]


# ---------------------------------------------------------------- layers ---

def conv2d(x, w, stride=1, pad=1):
    """x [N,C,H,W], w [O,C,kh,kw] -> [N,O,Ho,Wo]; zero padding, no bias.
    im2col via as_strided, then one matmul (float64)."""
    n, c, h, wd = x.shape
    o, c2, kh, kw = w.shape
    assert c == c2, (x.shape, w.shape)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (wd + 2 * pad - kw) // stride + 1
    sn, sc, sh, sw = xp.strides
    cols = np.lib.stride_tricks.as_strided(
        xp,
        shape=(n, ho, wo, c, kh, kw),
        strides=(sn, sh * stride, sw * stride, sc, sh, sw),
        writeable=False,
    ).reshape(n * ho * wo, c * kh * kw)          # copies: the im2col matrix
    out = cols @ w.reshape(o, c * kh * kw).T      # [N*Ho*Wo, O]
    return np.ascontiguousarray(out.reshape(n, ho, wo, o).transpose(0, 3, 1, 2))


def batchnorm(x, p, prefix):
    mean = p[prefix + ".running_mean"]
    var = p[prefix + ".running_var"]
    gamma = p[prefix + ".weight"]
    beta = p[prefix + ".bias"]
    scale = gamma / np.sqrt(var + BN_EPS)
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + beta[None, :, None, None]


def relu(x):
    return np.maximum(x, 0.0)


def shortcut_a(x, planes):
    """Option A: spatial subsample by 2, zero-pad channels planes//4 each side."""
    y = x[:, :, ::2, ::2]
    padc = planes // 4
    return np.pad(y, ((0, 0), (padc, padc), (0, 0), (0, 0)))


# ----------------------------------------------------------------- model ---

def infer_depth(p):
    blocks = {k.split(".")[1] for k in p if k.startswith("layer1.")}
    return 6 * len(blocks) + 2


def load_params(path):
    sd, extra = load_state_dict(path)
    return {k: v.astype(np.float64) for k, v in sd.items()}, extra


def forward(p, x, depth):
    """p: dict name -> float64 array (no 'module.' prefix); x: [N,3,32,32]
    float64 normalized input. Returns logits [N,10] float64."""
    assert (depth - 2) % 6 == 0, depth
    nblocks = (depth - 2) // 6
    out = relu(batchnorm(conv2d(x, p["conv1.weight"]), p, "bn1"))
    in_planes = 16
    for li, planes in enumerate((16, 32, 64), start=1):
        for bi in range(nblocks):
            stride = 2 if (li > 1 and bi == 0) else 1
            pre = "layer%d.%d." % (li, bi)
            y = relu(batchnorm(conv2d(out, p[pre + "conv1.weight"], stride=stride), p, pre + "bn1"))
            y = batchnorm(conv2d(y, p[pre + "conv2.weight"]), p, pre + "bn2")
            if stride != 1 or in_planes != planes:
                sc = shortcut_a(out, planes)
            else:
                sc = out
            out = relu(y + sc)
            in_planes = planes
    pooled = out.mean(axis=(2, 3))                # avg_pool2d over 8x8
    return pooled @ p["linear.weight"].T + p["linear.bias"]


def check_param_names(p, depth):
    nblocks = (depth - 2) // 6
    expect = {"conv1.weight", "linear.weight", "linear.bias"}
    bn = lambda s: {s + ".weight", s + ".bias", s + ".running_mean", s + ".running_var"}
    expect |= bn("bn1")
    for li in (1, 2, 3):
        for bi in range(nblocks):
            pre = "layer%d.%d." % (li, bi)
            expect |= {pre + "conv1.weight", pre + "conv2.weight"} | bn(pre + "bn1") | bn(pre + "bn2")
    have = {k for k in p if not k.endswith("num_batches_tracked")}
    if have != expect:
        raise ValueError("checkpoint/depth mismatch: missing %s, unexpected %s"
                         % (sorted(expect - have)[:5], sorted(have - expect)[:5]))


# ------------------------------------------------------------------- cli ---

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="legacy .th checkpoint")
    ap.add_argument("--depth", type=int, default=None, help="20/32/44/56/... (default: inferred)")
    ap.add_argument("--data", required=True, help="CIFAR-10 binary file (3073-byte records)")
    ap.add_argument("--count", type=int, default=None,
                    help="number of leading records (required with --out; default all for --check-accuracy)")
    ap.add_argument("--out", help="write logits JSON here")
    ap.add_argument("--check-accuracy", action="store_true", help="print top-1 accuracy")
    ap.add_argument("--batch", type=int, default=100, help="batch size for --check-accuracy")
    args = ap.parse_args()
    if not args.out and not args.check_accuracy:
        ap.error("give --out and/or --check-accuracy")

    p, extra = load_params(args.weights)
    depth = args.depth if args.depth is not None else infer_depth(p)
    if depth != infer_depth(p):
        ap.error("--depth %d but checkpoint has depth %d" % (depth, infer_depth(p)))
    check_param_names(p, depth)

    if args.out:
        if args.count is None:
            ap.error("--out needs --count")
        images, labels = read_records(args.data, args.count)
        logits = forward(p, preprocess(images), depth)
        pred = logits.argmax(axis=1)
        acc = 100.0 * float((pred == labels).sum()) / len(labels)
        doc = {
            "weights": os.path.basename(args.weights),
            "sha256": sha256_file(args.weights),
            "data": os.path.basename(args.data),
            "count": int(args.count),
            "logits": [[float(v) for v in row] for row in logits],  # repr = round-trip exact
            "labels": [int(v) for v in labels],
            "accuracy": acc,
        }
        d = os.path.dirname(args.out)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print("wrote %s: %d records, accuracy %.4f%%" % (args.out, args.count, acc))

    if args.check_accuracy:
        total = args.count if args.count is not None else num_records(args.data)
        correct = 0
        t0 = time.time()
        for start in range(0, total, args.batch):
            n = min(args.batch, total - start)
            images, labels = read_records(args.data, n, start)
            logits = forward(p, preprocess(images), depth)
            correct += int((logits.argmax(axis=1) == labels).sum())
        print("%s depth=%d records=%d top-1 correct=%d accuracy=%.2f%% (%.1fs; best_prec1 in file %.2f)"
              % (os.path.basename(args.weights), depth, total, correct, 100.0 * correct / total,
                 time.time() - t0, extra.get("best_prec1", float("nan"))))


if __name__ == "__main__":
    main()

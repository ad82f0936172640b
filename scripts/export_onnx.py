#!/usr/bin/env python3
"""Models no one here wrote, as ONNX: the input of `decomp import --onnx` (issue 20).

Needs PyTorch, torchvision, onnx and onnxruntime (`pip install torch torchvision onnx
onnxruntime`); nothing of the Rust workspace. Subcommands:

  resnet20   the pretrained akamaster ResNet-20 checkpoint (.th) as ONNX: the same
             BatchNorm-preserving export every other model gets, so `decomp import --onnx`
             of it must equal the `.th` import bit for bit in the weights.
  train      torchvision's VGG-11 with BatchNorm (`vgg11_bn`) or MobileNetV2
             (`mobilenet_v2`), adapted to 32x32 inputs (see ADAPTATION below), trained for a
             short schedule on CIFAR-10 (binary batches) and exported.
  ops        a small untrained network (seeded) that uses every op the importer maps and the
             real models do not: Concat, grouped (non-depthwise) convolution, padded average
             pooling, a clip that is not ReLU6, MatMul + Add, a constant added over a map,
             a stride-2 max pool with padding, and flatten through Reshape.
  reference  logits of an ONNX file on the first N images of the CIFAR-10 test batch,
             computed by onnxruntime (and PyTorch when the model comes from this script),
             written as JSON for the Rust tests.

Every export is opset 17, BatchNorm kept as BatchNormalization (TrainingMode.PRESERVE on an
eval()-mode model: the TorchScript exporter's EVAL mode would fold BatchNorm into the
convolutions, which changes the weights), batch axis dynamic (so Reshape/Flatten shapes go
through Shape/Gather/Concat chains the importer folds), and metadata_props `class_names`
(comma-separated), `input_mean` and `input_std` (normalization of x / 255, comma-separated).

ADAPTATION to 32x32 inputs (only constructor arguments of torchvision plus the documented
module swaps below; torchvision's block definitions are untouched):
  VGG-11-BN: `torchvision.models.vgg11_bn(num_classes=K)` has five 2x2 max pools, so a 32x32
    input reaches the classifier as 512x1x1. Its AdaptiveAvgPool2d((7, 7)) would copy that
    pixel 49 times for a 25088-wide first Linear (a 37 MB fp32 model of which 98% is the
    classifier), so `avgpool` is replaced by nn.Flatten-compatible identity and `classifier`
    by torchvision's own layout at width `--hidden` (Linear 512->h, ReLU, Dropout,
    Linear h->h, ReLU, Dropout, Linear h->K; torchvision uses h = 4096 for 224x224). With
    `--width-div D` the convolution widths of configuration "A" are divided by D
    (`torchvision.models.vgg.make_layers(cfg, batch_norm=True)` builds the features, as
    `vgg11_bn` does): used only for the small committed test fixture.
  MobileNetV2: `torchvision.models.mobilenet_v2(num_classes=K, width_mult=W,
    inverted_residual_setting=S)` with S = torchvision's default setting whose second row
    (t=6, c=24, n=2) has stride 1 instead of 2, and the stem convolution's stride set to 1
    after construction (the constructor has no argument for it): total stride 8, so a
    32x32 input ends at 4x4 before the global pool (the usual CIFAR adaptation, as in
    kuangliu/pytorch-cifar). `--width-mult` is torchvision's own width argument.
"""

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RECORD = 3073
# Normalization of the akamaster checkpoints (ImageNet statistics), and of the models
# trained here (CIFAR-10 training-set statistics).
AKAMASTER_NORM = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CIFAR_NORM = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])


def read_cifar(files, classes=None, limit=None):
    """Images uint8 [N, 3, 32, 32] and labels of CIFAR-10 binary records, optionally only
    `classes` (relabelled 0..k-1 in the given order) and the first `limit` matches."""
    imgs, labels = [], []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8).reshape(-1, RECORD)
        imgs.append(raw[:, 1:].reshape(-1, 3, 32, 32))
        labels.append(raw[:, 0].astype(np.int64))
    x, y = np.concatenate(imgs), np.concatenate(labels)
    if classes is not None:
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
        remap = {c: i for i, c in enumerate(classes)}
        y = np.array([remap[v] for v in y], dtype=np.int64)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


def normalize(x_u8, norm):
    mean = np.array(norm[0], dtype=np.float32)[None, :, None, None]
    std = np.array(norm[1], dtype=np.float32)[None, :, None, None]
    return ((x_u8.astype(np.float32) / 255.0) - mean) / std


# ------------------------------------------------------------------ models --

# ------------------------------------------------------------------ export --

def export(model, path, classes, norm, input_shape=(3, 32, 32)):
    import onnx
    import torch

    model.eval()
    x = torch.zeros(1, *input_shape)
    tmp = path + ".tmp"
    kwargs = dict(
        input_names=["input"], output_names=["logits"], opset_version=17,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    try:
        torch.onnx.export(model, (x,), tmp, dynamo=False, **kwargs)
    except TypeError:  # older torch without the dynamo argument
        torch.onnx.export(model, (x,), tmp, **kwargs)
    m = onnx.load(tmp)
    for key, value in [("class_names", ",".join(classes)),
                       ("input_mean", ",".join(repr(v) for v in norm[0])),
                       ("input_std", ",".join(repr(v) for v in norm[1]))]:
        p = m.metadata_props.add()
        p.key, p.value = key, value
    onnx.checker.check_model(m)
    onnx.save(m, tmp)
    os.replace(tmp, path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    print("%s: %d bytes, sha256 %s" % (path, os.path.getsize(path), digest))


def cmd_resnet20(a):
    import torch

    # The akamaster ResNet-20 (module names as its resnet.py, so the checkpoint loads by
    # name), as the framework benchmark builds it.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_frameworks import torch_resnet20

    model = torch_resnet20()
    obj = torch.load(a.weights, map_location="cpu", weights_only=False)
    sd = obj.get("state_dict", obj)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit("checkpoint does not fit: missing %s, unexpected %s" % (missing, unexpected))
    export(model, a.out, CIFAR10, AKAMASTER_NORM)


def ops_net():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Ops(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, 1, 1)
            self.bn = nn.BatchNorm2d(8)
            self.left = nn.Conv2d(8, 8, 3, 2, 1, groups=2, bias=False)
            self.right = nn.Conv2d(8, 4, 1, 2, 0)
            self.dw = nn.Conv2d(12, 12, 5, 1, 2, groups=12)
            self.offset = nn.Parameter(torch.randn(1, 12, 1, 1) * 0.1)
            self.w = nn.Parameter(torch.randn(12 * 4 * 4, 16) * 0.05)
            self.b = nn.Parameter(torch.randn(16) * 0.1)
            self.fc = nn.Linear(16 + 16, 10)

        def forward(self, x):
            x = F.relu6(self.bn(self.stem(x)))                           # [8, 32, 32]
            x = torch.cat([self.left(x), F.relu(self.right(x))], 1)     # [12, 16, 16]
            x = torch.clamp(self.dw(x), -1.0, 2.5) + self.offset         # clip, constant add
            x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=True)        # [12, 8, 8]
            x = F.max_pool2d(x, 3, 2, 1)                                 # [12, 4, 4]
            v = x.reshape(x.shape[0], -1)                                # [192]
            h = F.relu(v @ self.w + self.b)                              # MatMul + Add
            g = torch.cat([h, F.hardtanh(h, 0.0, 0.5)], 1)               # vector concat
            return self.fc(g)

    torch.manual_seed(0)
    model = Ops()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


def cmd_ops(a):
    export(ops_net(), a.out, ["c%d" % i for i in range(10)], CIFAR_NORM)


def cmd_train(a):
    import torch
    import torch.nn as nn

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    classes = [int(c) for c in a.classes.split(",")] if a.classes else list(range(10))
    names = [CIFAR10[c] for c in classes]
    k = len(classes)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torchvision_cifar import mobilenet_v2_32, vgg11_bn_32

    if a.arch == "vgg11_bn":
        model = vgg11_bn_32(k, a.hidden, a.width_div)
    else:
        model = mobilenet_v2_32(k, a.width_mult)
    data = a.data
    train_files = [os.path.join(data, "data_batch_%d.bin" % i) for i in range(1, 6)]
    x, y = read_cifar(train_files, classes, a.train_limit)
    xt, yt = read_cifar([os.path.join(data, "test_batch.bin")], classes)
    xn, xtn = normalize(x, CIFAR_NORM), normalize(xt, CIFAR_NORM)
    params = sum(p.numel() for p in model.parameters())
    print("%s: %d parameters, %d training images of %d classes" % (a.arch, params, len(x), k))
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = a.epochs * ((len(x) + a.batch - 1) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(a.seed)
    start = time.time()
    for epoch in range(a.epochs):
        model.train()
        order = rng.permutation(len(x))
        total, correct, loss_sum = 0, 0, 0.0
        for s in range(0, len(order), a.batch):
            idx = order[s:s + a.batch]
            xb = xn[idx].copy()
            # Augmentation: random horizontal flip and a 4-pixel shift (zero padded), both
            # drawn per image.
            n = len(idx)
            flip = rng.random(n) < 0.5
            xb[flip] = xb[flip, :, :, ::-1]
            pad = np.pad(xb, ((0, 0), (0, 0), (4, 4), (4, 4)))
            dy, dx = rng.integers(0, 9, n), rng.integers(0, 9, n)
            rows = (dy[:, None] + np.arange(32))[:, None, :, None]
            cols = (dx[:, None] + np.arange(32))[:, None, None, :]
            xb = np.ascontiguousarray(
                pad[np.arange(n)[:, None, None, None], np.arange(3)[None, :, None, None], rows, cols])
            xb, yb = torch.from_numpy(xb), torch.from_numpy(y[idx])
            out = model(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += (out.argmax(1) == yb).sum().item()
            loss_sum += loss.item() * len(idx)
        acc = evaluate(model, xtn[:a.eval_limit], yt[:a.eval_limit])
        print("epoch %d: loss %.4f train %.4f test(first %d) %.4f (%.0f s)" % (
            epoch + 1, loss_sum / total, correct / total, min(a.eval_limit, len(yt)), acc,
            time.time() - start), flush=True)
    wall = time.time() - start
    acc = evaluate(model, xtn, yt)
    print("test top-1 %.4f on all %d test images, %.0f s of training" % (acc, len(yt), wall))
    export(model, a.out, names, CIFAR_NORM)
    torch.save(model.state_dict(), a.out + ".pt")
    summary = {"arch": a.arch, "classes": names, "parameters": params,
               "train_images": len(x), "epochs": a.epochs, "batch": a.batch, "lr": a.lr,
               "hidden": a.hidden, "width_div": a.width_div, "width_mult": a.width_mult,
               "seed": a.seed, "threads": a.threads, "train_seconds": round(wall, 1),
               "test_images": len(yt), "test_top1": float(acc), "torch": torch.__version__,
               "sha256": hashlib.sha256(open(a.out, "rb").read()).hexdigest()}
    with open(a.out + ".train.json", "w") as f:
        json.dump(summary, f, indent=1)


def evaluate(model, xn, y, batch=500):
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(xn), batch):
            out = model(torch.from_numpy(xn[s:s + batch]))
            correct += (out.argmax(1).numpy() == y[s:s + batch]).sum()
    return correct / len(xn)


def cmd_reference(a):
    import onnx
    import onnxruntime as ort

    m = onnx.load(a.model)
    meta = {p.key: p.value for p in m.metadata_props}
    norm = ([float(v) for v in meta["input_mean"].split(",")],
            [float(v) for v in meta["input_std"].split(",")])
    x, y = read_cifar([a.data], None, a.count)
    xn = normalize(x, norm)
    sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: xn})[0]
    out = {
        "model": os.path.basename(a.model),
        "model_sha256": hashlib.sha256(open(a.model, "rb").read()).hexdigest(),
        "data": "first %d records of the CIFAR-10 test batch (test_batch.bin)" % a.count,
        "computed_by": "onnxruntime %s (CPUExecutionProvider)" % ort.__version__,
        "labels": y.tolist(),
        "logits": [[float(v) for v in row] for row in logits],
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print("%s: %d images, top-1 %.3f" % (a.out, len(y), float((logits.argmax(1) == y).mean())))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("resnet20")
    r.add_argument("--weights", required=True)
    r.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--arch", choices=["vgg11_bn", "mobilenet_v2"], required=True)
    t.add_argument("--data", required=True, help="the cifar-10-batches-bin folder")
    t.add_argument("--classes", help="CIFAR-10 class indices, comma-separated (default all 10)")
    t.add_argument("--train-limit", type=int)
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--hidden", type=int, default=512, help="VGG classifier width")
    t.add_argument("--width-div", type=int, default=1, help="VGG convolution widths / D")
    t.add_argument("--width-mult", type=float, default=1.0, help="MobileNetV2 width_mult")
    t.add_argument("--eval-limit", type=int, default=2000, help="test images scored per epoch")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True)
    o = sub.add_parser("ops")
    o.add_argument("--out", required=True)
    f = sub.add_parser("reference")
    f.add_argument("--model", required=True)
    f.add_argument("--data", required=True, help="test_batch.bin")
    f.add_argument("--count", type=int, default=16)
    f.add_argument("--out", required=True)
    a = p.parse_args()
    {"resnet20": cmd_resnet20, "train": cmd_train, "ops": cmd_ops, "reference": cmd_reference}[a.cmd](a)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""ResNet-20 (CIFAR, 32x32, option-A shortcuts) throughput in PyTorch and TensorFlow next to
decomp's own probe (`cargo run -p decomp-benches --bin infer`), interleaved in one run.

Two subcommands:

  probe   time one framework in this process and print one JSON line:
            bench_frameworks.py probe --framework torch --mode infer [--weights r20.th]
            bench_frameworks.py probe --framework tf --mode train
          PyTorch loads the akamaster checkpoint when --weights is given (inference), else
          random weights; TensorFlow builds the same architecture with random weights
          (throughput does not depend on the values).

  compare run `rounds` rounds; each round runs every probe once as a fresh process, in the
          same order (decomp cpu engine, decomp burn engine, PyTorch, TensorFlow, ...), and
          reports per probe the median images/s, the ratio to decomp's CPU engine, and the
          peak RSS of the process (os.wait4's ru_maxrss) and the median CPU time per image
          (user + system seconds of the timed steps: less sensitive than wall time to other
          load on the machine). Writes JSON to --out if given.
            bench_frameworks.py compare --rounds 3 --decomp target/debug/infer \\
                --weights ../shared/models/cifar10/resnet20-12fca82f.th --train

Models a user brings as ONNX (issue 20): `compare --onnx model.onnx --arch vgg11_bn|mobilenet_v2
--frameworks torch,ort` times decomp's engines on the imported model, onnxruntime on the file, and
PyTorch on the same architecture built by scripts/export_onnx.py (random weights; pass the width
flags the model was exported with). Needs torchvision and onnxruntime:
            bench_frameworks.py compare --decomp target/debug/infer --skip-burn \
                --onnx models/onnx/vgg11_bn.onnx --arch vgg11_bn --frameworks torch,ort

Threads: every probe gets --threads (default 2) through its own API (torch.set_num_threads,
tf intra-op threads) and the usual environment variables (RAYON_NUM_THREADS, OMP_NUM_THREADS).
Training is SGD (lr 0.1, momentum 0.9, weight decay 1e-4) with cross-entropy on random
labels, batch 128, one optimizer step per batch: what the akamaster training script does.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def peak_rss_kib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- PyTorch


def torch_resnet(depth=20, bn=True, num_classes=10):
    """CIFAR ResNet-`depth` (option-A shortcuts) as decomp builds it: BatchNorm after every
    convolution, or (bn=False, the paper's setting) none and a bias in every convolution."""
    import torch.nn as nn
    import torch.nn.functional as F

    def norm(c):
        return nn.BatchNorm2d(c) if bn else nn.Identity()

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not bn)
            self.bn1 = norm(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not bn)
            self.bn2 = norm(cout)
            self.pad = (cout - cin) // 2 if (stride != 1 or cin != cout) else None
            self.stride = stride

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.pad is None:
                sc = x
            else:  # option A: subsample, zero-pad channels
                sc = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))
            return F.relu(out + sc)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=not bn)
            self.bn1 = norm(16)
            layers, cin = [], 16
            for cout, stride in [(16, 1), (32, 2), (64, 2)]:
                blocks = []
                for i in range((depth - 2) // 6):
                    blocks.append(Block(cin, cout, stride if i == 0 else 1))
                    cin = cout
                layers.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3 = layers
            self.linear = nn.Linear(64, num_classes)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer3(self.layer2(self.layer1(out)))
            out = F.adaptive_avg_pool2d(out, 1).flatten(1)
            return self.linear(out)

    return ResNet()


def torch_resnet20(num_classes=10):
    return torch_resnet(20, True, num_classes)


def torch_augment(x, adam):
    """The recipe's augmentation of one batch (NCHW), as decomp's trainer applies it:
    he2016 (SGD): 4-pixel zero pad + random 32x32 crop + horizontal flip; paper-keras (Adam):
    random shifts of up to 10% (3 pixels) with edges repeated + horizontal flip."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    p = 3 if adam else 4
    xp = F.pad(x, (p, p, p, p), mode="replicate" if adam else "constant")
    oy = torch.randint(0, 2 * p + 1, (n,)).tolist()
    ox = torch.randint(0, 2 * p + 1, (n,)).tolist()
    out = torch.stack([xp[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(n)])
    flip = torch.rand(n) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def probe_torch(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    if args.arch != "resnet":
        # An ONNX model's architecture as scripts/export_onnx.py builds it (random weights:
        # throughput does not depend on the values).
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import torchvision_cifar

        if args.arch == "vgg11_bn":
            model = torchvision_cifar.vgg11_bn_32(args.classes, args.hidden, args.width_div)
        else:
            model = torchvision_cifar.mobilenet_v2_32(args.classes, args.width_mult)
        if args.mode != "infer":
            raise SystemExit(f"--arch {args.arch}: only --mode infer is timed")
    else:
        model = torch_resnet(args.depth, not args.no_bn)
    if args.weights:
        ckpt = torch.load(args.weights, map_location="cpu", weights_only=False)
        state = ckpt.get("state_dict", ckpt)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SystemExit(f"checkpoint {args.weights}: missing {missing}, unexpected {unexpected}")
    x = torch.randn(args.batch, 3, 32, 32)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if args.mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode():
                model(x).sum().item()

    else:
        model.train()
        y = torch.randint(0, 10, (args.batch,))
        if args.adam:  # paper-keras: Adam with L2 (torch's weight_decay adds wd * w to g)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7,
                                   weight_decay=1e-4)
        else:  # he2016
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            xb = torch_augment(x, args.adam) if args.augment else x
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), y)
            loss.backward()
            opt.step()
            loss.item()

    params = sum(p.numel() for p in model.parameters())
    return time_steps(step, args), {"version": torch.__version__, "threads": torch.get_num_threads(),
                                    "arch": args.arch, "parameters": params}


# ---------------------------------------------------------------- onnxruntime


def probe_ort(args):
    """An ONNX model in onnxruntime (inference only)."""
    import numpy as np
    import onnxruntime as ort

    if not args.onnx:
        raise SystemExit("--framework ort needs --onnx FILE")
    if args.mode != "infer":
        raise SystemExit("--framework ort: only --mode infer is timed")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.onnx, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [args.batch] + [d if isinstance(d, int) else 32 for d in inp.shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def step():
        sess.run(None, {inp.name: x})

    return time_steps(step, args), {"version": ort.__version__, "threads": args.threads,
                                    "onnx": os.path.basename(args.onnx)}


# ---------------------------------------------------------------- TensorFlow


def tf_resnet(depth=20, bn=True, num_classes=10):
    """The same ResNet in Keras (NHWC)."""
    import tensorflow as tf
    from tensorflow import keras
    from tensorflow.keras import layers as L

    def norm(t):
        return L.BatchNormalization()(t) if bn else t

    def block(x, cout, stride):
        cin = x.shape[-1]
        out = L.Conv2D(cout, 3, stride, padding="same", use_bias=not bn)(x)
        out = L.ReLU()(norm(out))
        out = L.Conv2D(cout, 3, 1, padding="same", use_bias=not bn)(out)
        out = norm(out)
        if stride != 1 or cin != cout:
            pad = (cout - cin) // 2
            sc = L.Lambda(lambda t: tf.pad(t[:, ::stride, ::stride, :], [[0, 0], [0, 0], [0, 0], [pad, pad]]))(x)
        else:
            sc = x
        return L.ReLU()(L.Add()([out, sc]))

    inp = keras.Input((32, 32, 3))
    x = L.Conv2D(16, 3, 1, padding="same", use_bias=not bn)(inp)
    x = L.ReLU()(norm(x))
    for cout, stride in [(16, 1), (32, 2), (64, 2)]:
        for i in range((depth - 2) // 6):
            x = block(x, cout, stride if i == 0 else 1)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(num_classes)(x))


def tf_resnet20(num_classes=10):
    return tf_resnet(20, True, num_classes)


def tf_augment(x, adam):
    """torch_augment in TensorFlow (NHWC), inside the compiled step."""
    import tensorflow as tf

    p = 3 if adam else 4
    xp = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="SYMMETRIC" if adam else "CONSTANT")
    shape = tf.shape(x)[1:]
    out = tf.map_fn(lambda im: tf.image.random_crop(im, shape), xp)
    return tf.image.random_flip_left_right(out)


def probe_tf(args):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(0)
    model = tf_resnet(args.depth, not args.no_bn)
    x = tf.random.normal((args.batch, 32, 32, 3))
    if args.mode == "infer":
        fwd = tf.function(lambda t: model(t, training=False), jit_compile=False)

        def step():
            float(tf.reduce_sum(fwd(x)))

    else:
        y = tf.random.uniform((args.batch,), 0, 10, dtype=tf.int32)
        if args.adam:
            opt = tf.keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.9, beta_2=0.999,
                                           epsilon=1e-7, weight_decay=1e-4)
        else:
            opt = tf.keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)
        loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def train_step():
            xb = tf_augment(x, args.adam) if args.augment else x
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(xb, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        def step():
            float(train_step())

    return time_steps(step, args), {"version": tf.__version__, "threads": args.threads}


# ---------------------------------------------------------------- common


def cpu_seconds():
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def time_steps(step, args):
    """Wall time of each timed step; CPU seconds of all of them go to args.cpu_s."""
    for _ in range(args.warmup):
        step()
    times = []
    c0 = cpu_seconds()
    for _ in range(args.iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    args.cpu_s = cpu_seconds() - c0
    return times


def cmd_probe(args):
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    times, info = {"torch": probe_torch, "tf": probe_tf, "ort": probe_ort}[args.framework](args)
    median = statistics.median(times)
    out = {
        "framework": {"torch": "pytorch", "tf": "tensorflow", "ort": "onnxruntime"}[args.framework],
        "mode": args.mode,
        "depth": args.depth,
        "batch_norm": not args.no_bn,
        "optimizer": "adam" if args.adam else "sgd",
        "augment": args.augment,
        "batch": args.batch,
        "iters": args.iters,
        "img_per_s": round(args.batch * len(times) / sum(times), 1),
        "img_per_s_median": round(args.batch / median, 1),
        "cpu_s_per_img": round(args.cpu_s / (args.batch * len(times)), 6),
        "peak_rss_kib": peak_rss_kib(),
        **info,
    }
    print(json.dumps(out), flush=True)


def run_child(cmd, threads):
    """Runs one probe process; returns (its JSON line, peak RSS KiB from wait4)."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line), ru.ru_maxrss


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def cmd_compare(args):
    me = [sys.executable, os.path.abspath(__file__), "probe", "--threads", str(args.threads),
          "--batch", str(args.batch), "--iters", str(args.iters), "--warmup", str(args.warmup)]
    common = ["--batch", str(args.batch), "--iters", str(args.iters), "--warmup", str(args.warmup)]
    probes = []
    model = args.onnx or args.weights
    if args.onnx and not args.arch:
        raise SystemExit("--onnx needs --arch (the PyTorch builder of the same model)")
    if args.onnx and "tf" in args.frameworks.split(","):
        raise SystemExit("--onnx: TensorFlow has no builder of these models; use --frameworks torch,ort")
    if args.decomp:
        w = ["--weights", model] if model else []
        probes.append(("decomp cpu engine", "infer", [args.decomp, "--engine", "cpu"] + common + w))
        if not args.skip_burn:
            probes.append(("decomp burn engine", "infer", [args.decomp, "--engine", "burn"] + common + w))
    frameworks = [fw for fw in args.frameworks.split(",") if fw]
    if args.train_configs:
        # One decomp and one probe per framework for each training configuration.
        for cfg in args.train_configs.split(","):
            flags, depth, batch = TRAIN_CONFIGS[cfg]
            run = ["--batch", str(batch), "--iters", str(args.iters), "--warmup", str(args.warmup),
                   "--depth", str(depth)] + flags
            if args.decomp_train:
                probes.append((f"decomp train {cfg}", "train", [args.decomp_train] + run))
            for fw in frameworks:
                fwme = [sys.executable, os.path.abspath(__file__), "probe", "--threads", str(args.threads)]
                probes.append((f"{fw} train {cfg}", "train", fwme + ["--framework", fw, "--mode", "train"] + run))
    elif args.decomp_train:
        probes.append(("decomp train", "train", [args.decomp_train] + common))
    for fw in frameworks if not args.train_configs else []:
        w = ["--weights", args.weights] if (args.weights and fw == "torch") else []
        if args.onnx:
            w = (["--onnx", args.onnx] if fw == "ort" else
                 ["--arch", args.arch, "--classes", str(args.classes), "--hidden", str(args.hidden),
                  "--width-div", str(args.width_div), "--width-mult", str(args.width_mult)])
        probes.append((f"{fw} infer", "infer", me + ["--framework", fw, "--mode", "infer"] + w))
        if args.train:
            probes.append((f"{fw} train", "train", me + ["--framework", fw, "--mode", "train"]))
    results = {name: [] for name, _, _ in probes}
    cpu = {name: [] for name, _, _ in probes}
    rss = {name: 0 for name, _, _ in probes}
    loads = []
    for r in range(args.rounds):
        for name, _, cmd in probes:
            loads.append(loadavg())
            j, maxrss = run_child(cmd, args.threads)
            results[name].append(j["img_per_s"])
            if j.get("cpu_s_per_img") is not None:
                cpu[name].append(j["cpu_s_per_img"])
            rss[name] = max(rss[name], maxrss)
            log(f"round {r + 1}/{args.rounds} {name}: {j['img_per_s']} img/s (load {loads[-1]:.2f})")
    med = {k: statistics.median(v) for k, v in results.items()}
    base = med.get("decomp cpu engine")

    def base_train(name):
        # The decomp training probe of the same configuration.
        cfg = name.split(" train", 1)[1] if " train" in name else ""
        return med.get("decomp train" + cfg)

    summary = {
        "model": os.path.basename(args.onnx) if args.onnx else "resnet",
        "batch": args.batch,
        "threads": args.threads,
        "rounds": args.rounds,
        "cpu": cpu_name(),
        "load_avg_1min": {"min": min(loads), "max": max(loads)},
        "probes": [
            {
                "name": name,
                "mode": mode,
                "img_per_s_median": med[name],
                "img_per_s_all": results[name],
                "ratio_decomp_cpu_to_this": round(base / med[name], 3) if base and mode == "infer" else None,
                "ratio_decomp_train_to_this": round(base_train(name) / med[name], 3) if base_train(name) and mode == "train" else None,
                "cpu_ms_per_img_median": round(1000 * statistics.median(cpu[name]), 3) if cpu[name] else None,
                "peak_rss_mib": round(rss[name] / 1024, 1),
            }
            for name, mode, _ in probes
        ],
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.out)


# Training configurations of issue 14: (probe flags, depth, batch).
TRAIN_CONFIGS = {
    "r20-bn-sgd-aug": (["--augment"], 20, 128),
    "r56-bn-sgd-aug": (["--augment"], 56, 128),
    "r20-nobn-adam-aug-b32": (["--no-bn", "--adam", "--augment"], 20, 32),
}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("probe", "compare"):
        s = sub.add_parser(name)
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--batch", type=int, default=128)
        s.add_argument("--iters", type=int, default=10)
        s.add_argument("--warmup", type=int, default=3)
        s.add_argument("--weights", help="akamaster ResNet-20 .th checkpoint (PyTorch and decomp)")
    pr = sub.choices["probe"]
    pr.add_argument("--framework", choices=["torch", "tf", "ort"], required=True)
    pr.add_argument("--onnx", help="the ONNX model onnxruntime (--framework ort) runs")
    pr.add_argument("--arch", choices=["resnet", "vgg11_bn", "mobilenet_v2"], default="resnet",
                    help="PyTorch: the ResNet above, or an export_onnx.py model (inference)")
    pr.add_argument("--classes", type=int, default=10)
    pr.add_argument("--hidden", type=int, default=512, help="export_onnx.py's VGG classifier width")
    pr.add_argument("--width-div", type=int, default=1, help="export_onnx.py's VGG width divisor")
    pr.add_argument("--width-mult", type=float, default=1.0, help="MobileNetV2 width_mult")
    pr.add_argument("--mode", choices=["infer", "train"], default="infer")
    pr.add_argument("--channels-last", action="store_true", help="PyTorch channels_last layout")
    pr.add_argument("--depth", type=int, default=20, help="ResNet depth (6n + 2)")
    pr.add_argument("--no-bn", action="store_true", help="no BatchNorm, biased convolutions")
    pr.add_argument("--adam", action="store_true", help="paper-keras's Adam instead of he2016's SGD")
    pr.add_argument("--augment", action="store_true", help="the recipe's augmentation in each step")
    c = sub.choices["compare"]
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--decomp", help="path of decomp's `infer` probe binary")
    c.add_argument("--decomp-train", help="path of decomp's `train_probe` binary (training steps)")
    c.add_argument("--skip-burn", action="store_true", help="do not time decomp's burn engine")
    c.add_argument("--frameworks", default="torch,tf", help="comma list of torch, tf (empty: none)")
    c.add_argument("--train", action="store_true", help="also time a training step per framework")
    c.add_argument("--train-configs", help="comma list of training configurations to compare "
                   f"(decomp and every framework, each in its own probe): {', '.join(TRAIN_CONFIGS)}")
    c.add_argument("--onnx", help="time this ONNX model instead of ResNet-20: decomp's engines "
                   "(--weights FILE.onnx), onnxruntime (framework ort) and PyTorch's build of --arch")
    c.add_argument("--arch", choices=["vgg11_bn", "mobilenet_v2"], help="with --onnx: the PyTorch builder")
    c.add_argument("--classes", type=int, default=10)
    c.add_argument("--hidden", type=int, default=512, help="with --arch vgg11_bn: classifier width")
    c.add_argument("--width-div", type=int, default=1, help="with --arch vgg11_bn: width divisor")
    c.add_argument("--width-mult", type=float, default=1.0, help="with --arch mobilenet_v2")
    c.add_argument("--out", help="write the JSON summary here")
    args = p.parse_args()
    (cmd_probe if args.cmd == "probe" else cmd_compare)(args)


if __name__ == "__main__":
    main()

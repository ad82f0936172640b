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


def torch_resnet20(num_classes=10):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
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
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            layers, cin = [], 16
            for cout, stride in [(16, 1), (32, 2), (64, 2)]:
                blocks = []
                for i in range(3):
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


def probe_torch(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    model = torch_resnet20()
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
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            loss.item()

    return time_steps(step, args), {"version": torch.__version__, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- TensorFlow


def tf_resnet20(num_classes=10):
    import tensorflow as tf
    from tensorflow import keras
    from tensorflow.keras import layers as L

    def block(x, cout, stride):
        cin = x.shape[-1]
        out = L.Conv2D(cout, 3, stride, padding="same", use_bias=False)(x)
        out = L.ReLU()(L.BatchNormalization()(out))
        out = L.Conv2D(cout, 3, 1, padding="same", use_bias=False)(out)
        out = L.BatchNormalization()(out)
        if stride != 1 or cin != cout:
            pad = (cout - cin) // 2
            sc = L.Lambda(lambda t: tf.pad(t[:, ::stride, ::stride, :], [[0, 0], [0, 0], [0, 0], [pad, pad]]))(x)
        else:
            sc = x
        return L.ReLU()(L.Add()([out, sc]))

    inp = keras.Input((32, 32, 3))
    x = L.Conv2D(16, 3, 1, padding="same", use_bias=False)(inp)
    x = L.ReLU()(L.BatchNormalization()(x))
    for cout, stride in [(16, 1), (32, 2), (64, 2)]:
        for i in range(3):
            x = block(x, cout, stride if i == 0 else 1)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(num_classes)(x))


def probe_tf(args):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(0)
    model = tf_resnet20()
    x = tf.random.normal((args.batch, 32, 32, 3))
    if args.mode == "infer":
        fwd = tf.function(lambda t: model(t, training=False), jit_compile=False)

        def step():
            float(tf.reduce_sum(fwd(x)))

    else:
        y = tf.random.uniform((args.batch,), 0, 10, dtype=tf.int32)
        opt = tf.keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)
        loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def train_step():
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
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
    times, info = (probe_torch if args.framework == "torch" else probe_tf)(args)
    median = statistics.median(times)
    out = {
        "framework": {"torch": "pytorch", "tf": "tensorflow"}[args.framework],
        "mode": args.mode,
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
    if args.decomp:
        w = ["--weights", args.weights] if args.weights else []
        probes.append(("decomp cpu engine", "infer", [args.decomp, "--engine", "cpu"] + common + w))
        if not args.skip_burn:
            probes.append(("decomp burn engine", "infer", [args.decomp, "--engine", "burn"] + common + w))
    if args.decomp_train:
        probes.append(("decomp train", "train", [args.decomp_train] + common))
    for fw in args.frameworks.split(","):
        if not fw:
            continue
        w = ["--weights", args.weights] if (args.weights and fw == "torch") else []
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
    base_train = med.get("decomp train")
    summary = {
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
                "ratio_decomp_train_to_this": round(base_train / med[name], 3) if base_train and mode == "train" else None,
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
    pr.add_argument("--framework", choices=["torch", "tf"], required=True)
    pr.add_argument("--mode", choices=["infer", "train"], default="infer")
    pr.add_argument("--channels-last", action="store_true", help="PyTorch channels_last layout")
    c = sub.choices["compare"]
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--decomp", help="path of decomp's `infer` probe binary")
    c.add_argument("--decomp-train", help="path of decomp's `train_probe` binary (training steps)")
    c.add_argument("--skip-burn", action="store_true", help="do not time decomp's burn engine")
    c.add_argument("--frameworks", default="torch,tf", help="comma list of torch, tf (empty: none)")
    c.add_argument("--train", action="store_true", help="also time a training step per framework")
    c.add_argument("--out", help="write the JSON summary here")
    args = p.parse_args()
    (cmd_probe if args.cmd == "probe" else cmd_compare)(args)


if __name__ == "__main__":
    main()

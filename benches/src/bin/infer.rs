//! ResNet inference (or the engine's share of it) timed outside criterion, printing one JSON
//! line: the probe `scripts/bench_frameworks.py` runs interleaved with PyTorch and TensorFlow.
//!
//! `cargo run -p decomp-benches --bin infer -- [--engine cpu|burn|module] [--depth 20]
//!  [--batch 128] [--iters 10] [--warmup 2] [--weights FILE.th|FILE.onnx]`
//!
//! `--weights` takes an akamaster ResNet checkpoint or any ONNX model `decomp import --onnx`
//! reads (its own input size; `module`, the burn ResNet, needs a ResNet).
//! `module` is the plain burn `Module` ResNet. Threads: `RAYON_NUM_THREADS` (rayon's global
//! pool, which both burn `flex` and the CPU plan use); the CPU plan's tuning: `DECOMP_CPU_*`
//! (`decomp_model::CpuTuning::from_vars`). Peak RSS and CPU time come from
//! `/proc/self/status` and `/proc/self/stat` (Linux; reported as null elsewhere).

/// The allocator `decomp` runs with (mimalloc), so the probe times what users run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use burn::tensor::{Device, Tensor, TensorData};
use decomp_model::burn_resnet::ResNet;
use decomp_model::import::{akamaster_norm, import_resnet};
use decomp_model::{CpuTuning, Engine, Executor, ResNetConfig, to_vec};

struct Args {
    engine: String,
    depth: usize,
    batch: usize,
    iters: usize,
    warmup: usize,
    weights: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        engine: "cpu".into(),
        depth: 20,
        batch: 128,
        iters: 10,
        warmup: 2,
        weights: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--engine" => a.engine = val()?,
            "--depth" => a.depth = num(val()?)?,
            "--batch" => a.batch = num(val()?)?,
            "--iters" => a.iters = num(val()?)?,
            "--warmup" => a.warmup = num(val()?)?,
            "--weights" => a.weights = Some(val()?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn main() {
    decomp_model::keep_freed_pages();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let model = match &args.weights {
        Some(w) => {
            let path = std::path::Path::new(w);
            let imported = if decomp_model::onnx::looks_like_onnx(path, &[]) {
                decomp_model::onnx::import_onnx(path, &Default::default())
            } else {
                import_resnet(path, None, akamaster_norm(), None)
            };
            match imported {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: importing {w}: {e}");
                    std::process::exit(1);
                }
            }
        }
        None => ResNetConfig::new(args.depth, 10)
            .with_seed(7)
            .build()
            .expect("a valid ResNet depth"),
    };
    let device = Device::flex();
    let [c, h, w] = model.graph.input_shape().unwrap_or_else(|e| {
        eprintln!("error: the model's input: {e}");
        std::process::exit(1)
    });
    let n = args.batch * c * h * w;
    let data: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.618).sin()).collect();
    let x = Tensor::<4>::from_data(TensorData::new(data, [args.batch, c, h, w]), &device);
    let run: Box<dyn Fn()> = match args.engine.as_str() {
        "module" => {
            let net = ResNet::from_ir(&model, &device).unwrap_or_else(|e| {
                eprintln!("error: the burn ResNet module: {e}");
                std::process::exit(1)
            });
            Box::new(move || drop(to_vec(net.forward(x.clone()))))
        }
        e => {
            let engine: Engine = e.parse().unwrap_or_else(|err| {
                eprintln!("error: {err}");
                std::process::exit(2)
            });
            let tuning = CpuTuning::from_vars(|k| std::env::var(k).ok());
            let exec = Executor::with_tuning(&model, &device, engine, tuning).expect("executor");
            Box::new(move || drop(to_vec(exec.forward(x.clone()).expect("forward"))))
        }
    };
    for _ in 0..args.warmup {
        run();
    }
    decomp_benches::time_and_report(&args.engine, args.depth, args.batch, args.iters, |_| run());
}

//! Benchmarks live in benches/benches.

/// (user + system CPU seconds, peak RSS in KiB) of this process, read from
/// `/proc/self/stat` and `/proc/self/status` (Linux; `None` elsewhere). Used by the JSON
/// probes in `src/bin`.
fn process_usage() -> (Option<f64>, Option<u64>) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        });
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        });
    (cpu, rss)
}

/// Times `iters` calls of `step(i)` (each processing one batch of `batch` images), then
/// prints the JSON line the probes in `src/bin` share (read by
/// `scripts/bench_frameworks.py`): mean and median images/s, CPU seconds per image, peak RSS.
/// Warm-up runs are the caller's.
pub fn time_and_report(
    engine: &str,
    depth: usize,
    batch: usize,
    iters: usize,
    mut step: impl FnMut(usize),
) {
    let (cpu0, _) = process_usage();
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters {
        let t = std::time::Instant::now();
        step(i);
        times.push(t.elapsed().as_secs_f64());
    }
    let (cpu1, rss) = process_usage();
    let total: f64 = times.iter().sum();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let images = (batch * iters) as f64;
    let cpu = cpu0.zip(cpu1).map(|(a, b)| b - a);
    println!(
        "{{\"framework\":\"decomp\",\"engine\":\"{engine}\",\"depth\":{depth},\"batch\":{batch},\"iters\":{iters},\"threads\":{},\"img_per_s\":{:.1},\"img_per_s_median\":{:.1},\"cpu_s_per_img\":{},\"peak_rss_kib\":{}}}",
        rayon::current_num_threads(),
        images / total,
        batch as f64 / median,
        cpu.map_or("null".into(), |c| format!("{:.6}", c / images)),
        rss.map_or("null".into(), |r| r.to_string()),
    );
}

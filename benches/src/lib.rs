//! Benchmarks live in benches/benches.

/// (user + system CPU seconds, peak RSS in KiB) of this process, read from
/// `/proc/self/stat` and `/proc/self/status` (Linux; `None` elsewhere). Used by the JSON
/// probes in `src/bin`.
pub fn process_usage() -> (Option<f64>, Option<u64>) {
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

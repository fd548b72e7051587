//! Latency histograms and result blocks.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies in microseconds (1 µs .. 10 min, 3 significant digits).
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// Empty.
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }

    /// Adds one sample.
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 600_000_000);
        self.0.record(us).expect("value within bounds");
    }

    /// Merges another histogram.
    pub fn add(&mut self, other: &Latencies) {
        self.0.add(&other.0).expect("same bounds");
    }

    fn ms(us: u64) -> String {
        format!("{:.2} ms", us as f64 / 1000.0)
    }

    /// `p50 .. p99 .. max` in milliseconds.
    pub fn summary(&self) -> String {
        if self.0.is_empty() {
            return "no samples".into();
        }
        format!(
            "n={} p50={} p90={} p99={} max={} mean={}",
            self.0.len(),
            Self::ms(self.0.value_at_quantile(0.50)),
            Self::ms(self.0.value_at_quantile(0.90)),
            Self::ms(self.0.value_at_quantile(0.99)),
            Self::ms(self.0.max()),
            Self::ms(self.0.mean() as u64),
        )
    }

    /// Value at quantile `q`.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.0.value_at_quantile(q))
    }

    /// Largest sample.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.0.max())
    }
}

/// Prints a result block header.
pub fn header(title: &str) {
    println!();
    println!("=== {title} ===");
}

/// Prints one `name: value` line of a result block.
pub fn line(name: &str, value: impl std::fmt::Display) {
    println!("  {name:<34} {value}");
}

/// `PASS` / `MISS` against a target.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// CPU time this process has used so far, user plus system (from `/proc/self/stat`,
/// in clock ticks of 10 ms: Linux's `CLK_TCK` of 100); `None` where unreadable.
/// Per call, it shows a change's effect on a VM whose throughput varies between
/// runs with what its neighbours do (steal time), as long as the phase lasts
/// seconds.
pub fn process_cpu() -> Option<Duration> {
    cpu_of("self")
}

/// Like [`process_cpu`], for the process `pid` (`/proc/<pid>/stat`).
pub fn process_cpu_of(pid: u32) -> Option<Duration> {
    cpu_of(&pid.to_string())
}

/// CPU time of this process's children that have exited and been waited for
/// (cutime plus cstime), e.g. an h2load run.
pub fn children_cpu() -> Option<Duration> {
    stat_ticks("self", 13)
}

fn cpu_of(proc_dir: &str) -> Option<Duration> {
    stat_ticks(proc_dir, 11)
}

/// The sum of two adjacent tick counters of `/proc/<proc_dir>/stat`, the first at
/// `index` counting from field 3, as a duration.
fn stat_ticks(proc_dir: &str, index: usize) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{proc_dir}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // `fields[0]` is field 3: utime and stime are fields 14 and 15 (index 11),
    // cutime and cstime 16 and 17 (index 13).
    let ticks =
        fields.get(index)?.parse::<u64>().ok()? + fields.get(index + 1)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU used between two readings of a counter (`None` when either is unknown).
pub fn cpu_between(before: Option<Duration>, after: Option<Duration>) -> Option<Duration> {
    before.zip(after).map(|(a, b)| b.saturating_sub(a))
}

/// `cpu` spent on `calls` calls over `elapsed`: "N µs per call (C cores)".
pub fn cpu_per_call(cpu: Option<Duration>, calls: u64, elapsed: Duration) -> String {
    match cpu {
        Some(cpu) if calls > 0 => format!(
            "{:.0} µs per call ({:.2} cores busy)",
            cpu.as_secs_f64() * 1e6 / calls as f64,
            cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9)
        ),
        _ => "unknown".to_string(),
    }
}

/// The machine's CPU time counters since boot (`/proc/stat`, first line): steal
/// and total, in ticks.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    Some((*ticks.get(7)?, ticks.iter().sum()))
}

/// Share of the machine's CPU time the hypervisor gave to others (steal) since
/// `since` ([`machine_ticks`]): on a shared VM the figures of a run are only
/// comparable with runs of similar steal.
pub fn steal_since(since: Option<(u64, u64)>) -> String {
    match since.zip(machine_ticks()) {
        Some(((s0, t0), (s1, t1))) if t1 > t0 => {
            format!(
                "{:.1}% of CPU time",
                100.0 * (s1 - s0) as f64 / (t1 - t0) as f64
            )
        }
        _ => "unknown".to_string(),
    }
}

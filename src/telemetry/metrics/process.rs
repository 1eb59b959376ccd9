//! The standard `process_*` metrics (the names Prometheus's own clients
//! export, so stock dashboards and alerts work), read from `/proc` at
//! scrape time. Not Linux: nothing is exported.

use std::fmt::Write as _;

/// `/proc`'s clock ticks per second: fixed at 100 in the kernel's ABI
/// (USER_HZ), whatever the kernel's internal HZ.
const USER_HZ: f64 = 100.0;

/// One reading of the process's own figures.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads `/proc/self`; None where there is no `/proc`.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        parse(&stat, &status, &boot, &limits, open_fds)
    }

    pub fn render(&self, out: &mut String) {
        for (name, kind, help, value) in [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                self.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                self.resident_bytes as f64,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                self.open_fds as f64,
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                self.max_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                self.start_time_seconds,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

/// The figures from the files' text (`/proc/self/stat`, `/proc/self/status`,
/// `/proc/stat`, `/proc/self/limits`).
fn parse(
    stat: &str,
    status: &str,
    boot: &str,
    limits: &str,
    open_fds: u64,
) -> Option<ProcessStats> {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields that follow start after the last ')'. rest[0] is field 3.
    let rest: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| -> Option<f64> { rest.get(n - 3)?.parse().ok() };
    let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
    let btime: f64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            l["Max open files".len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / USER_HZ,
        resident_bytes: rss_kib * 1024,
        open_fds,
        max_fds,
        start_time_seconds: btime + start_ticks / USER_HZ,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_field_by_field() {
        // A command name with a space and a parenthesis, as the kernel
        // writes it.
        let stat = "4242 (port cullis) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 3 0 12345 100000000 2560 18446744073709551615";
        let status = "Name:\tportcullis\nVmPeak:\t 20000 kB\nVmRSS:\t   10240 kB\n";
        let boot = "cpu  1 2 3\nbtime 1795000000\nprocesses 10\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            65536                1048576              files\n";
        let p = parse(stat, status, boot, limits, 17).unwrap();
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 3.25,
                resident_bytes: 10240 * 1024,
                open_fds: 17,
                max_fds: 65536,
                start_time_seconds: 1_795_000_123.45,
            }
        );
        assert!(parse("garbage", status, boot, limits, 0).is_none());
    }

    #[test]
    fn this_process_reads_sensibly() {
        let p = ProcessStats::read().expect("/proc on Linux");
        assert!(p.resident_bytes > 1024 * 1024, "{p:?}");
        assert!(p.open_fds >= 3 && p.max_fds >= p.open_fds, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0 * 365.0,
            "{p:?}"
        );
    }
}

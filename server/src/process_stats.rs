//! What the process and its disk use, read at each scrape of
//! `GET /api/v1/metrics`: CPU time, resident memory, open file descriptors
//! and their limit, threads (from Linux's `/proc/self`), and the free space
//! of the data directory's filesystem. Anything that cannot be read is left
//! out rather than reported as zero.

use std::path::Path;

/// One reading; `None` where the system did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub threads: Option<u64>,
    /// Bytes free to this process on the data directory's filesystem, and its size.
    pub disk_free_bytes: Option<u64>,
    pub disk_size_bytes: Option<u64>,
}

impl ProcessStats {
    /// Read now; `data_dir` is the filesystem to report on.
    pub fn read(data_dir: Option<&Path>) -> ProcessStats {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let (cpu_seconds, threads) = stat.as_deref().map_or((None, None), parse_stat);
        let resident_bytes = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|pages| pages * rustix::param::page_size() as u64);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64);
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let disk = data_dir.and_then(|dir| rustix::fs::statvfs(dir).ok());
        ProcessStats {
            cpu_seconds,
            resident_bytes,
            open_fds,
            max_fds,
            threads,
            disk_free_bytes: disk.as_ref().map(|d| d.f_bavail.saturating_mul(d.f_frsize)),
            disk_size_bytes: disk.as_ref().map(|d| d.f_blocks.saturating_mul(d.f_frsize)),
        }
    }
}

/// CPU seconds (user + system) and threads from `/proc/self/stat`. The
/// command name (field 2) may hold spaces and parentheses: fields are
/// counted after its last `)`.
fn parse_stat(stat: &str) -> (Option<f64>, Option<u64>) {
    let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
        return (None, None);
    };
    // `rest` starts at field 3 (state): field n is fields[n - 3].
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    #[allow(clippy::cast_precision_loss)] // clock ticks: far below 2^52
    let cpu = number(14)
        .zip(number(15))
        .map(|(user, system)| (user + system) as f64 / rustix::param::clock_ticks_per_second() as f64);
    (cpu, number(20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (avap (serve) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 12345 0";
        let (cpu, threads) = parse_stat(stat);
        #[allow(clippy::cast_precision_loss)] // about 100
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(cpu, Some(300.0 / ticks));
        assert_eq!(threads, Some(7));
        assert_eq!(parse_stat("garbage"), (None, None));
    }

    #[test]
    fn this_process_can_be_read() {
        let stats = ProcessStats::read(Some(Path::new("/")));
        assert!(stats.resident_bytes.is_some_and(|b| b > 0), "{stats:?}");
        assert!(stats.open_fds.is_some_and(|n| n >= 3), "{stats:?}");
        assert!(stats.threads.is_some_and(|n| n >= 1), "{stats:?}");
        assert!(stats.max_fds.is_some(), "{stats:?}");
        assert!(stats.disk_size_bytes.is_some_and(|b| b > 0), "{stats:?}");
    }
}

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
    /// The memory limit of this process' cgroup (a container's limit);
    /// `None` when there is none.
    pub memory_limit_bytes: Option<u64>,
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
            memory_limit_bytes: std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|cgroups| memory_limit(&cgroups, |path| std::fs::read_to_string(path).ok())),
        }
    }
}

/// The memory limit of the cgroup named in `/proc/self/cgroup` (`cgroups`):
/// v2 `memory.max`, else v1 `memory.limit_in_bytes`, in the process' own
/// cgroup or (inside a container, whose cgroup namespace hides the path)
/// at the root of the mount. "max", or v1's "no limit" (near 2^63), is `None`.
fn memory_limit(cgroups: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    const ROOT: &str = "/sys/fs/cgroup";
    let mut candidates = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if controllers.is_empty() {
            candidates.push(format!("{ROOT}{path}/memory.max"));
            candidates.push(format!("{ROOT}/memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("{ROOT}/memory{path}/memory.limit_in_bytes"));
            candidates.push(format!("{ROOT}/memory/memory.limit_in_bytes"));
        }
    }
    let limit = candidates.iter().find_map(|path| read(path))?;
    let limit = limit.trim().parse::<u64>().ok()?;
    // cgroup v1 writes "no limit" as the largest page-aligned i64.
    (limit < 1 << 62).then_some(limit)
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
    fn the_memory_limit_comes_from_the_processs_cgroup() {
        let files = |pairs: &'static [(&'static str, &'static str)]| {
            move |path: &str| pairs.iter().find(|(p, _)| *p == path).map(|(_, v)| (*v).to_owned())
        };
        // cgroup v2, the process' own cgroup.
        let v2 = files(&[("/sys/fs/cgroup/kubepods/pod1/memory.max", "536870912\n")]);
        assert_eq!(memory_limit("0::/kubepods/pod1\n", v2), Some(512 << 20));
        // v2 inside a container (the namespace's root), no limit.
        let unlimited = files(&[("/sys/fs/cgroup/memory.max", "max\n")]);
        assert_eq!(memory_limit("0::/\n", unlimited), None);
        // cgroup v1 (hybrid: the memory controller is v1's).
        let v1 = files(&[("/sys/fs/cgroup/memory/app/x/memory.limit_in_bytes", "1073741824")]);
        assert_eq!(memory_limit("4:memory:/app/x\n0::/\n", v1), Some(1 << 30));
        let v1_none = files(&[("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712")]);
        assert_eq!(memory_limit("4:cpu,memory:/gone\n", v1_none), None, "v1's no limit");
        assert_eq!(memory_limit("", files(&[])), None);
        assert_eq!(memory_limit("garbage", files(&[])), None);
    }

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

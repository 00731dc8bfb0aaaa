//! Process liveness: the [`Liveness`] seam and its `/proc` implementation.

use std::io;
use std::sync::Arc;

use rustix::process::{test_kill_process, Pid};

/// Whether a recorded process is still the one that holds an allocation.
///
/// Required method: [`start_time`](Self::start_time). Provided:
/// [`is_same_process`](Self::is_same_process), [`is_alive`](Self::is_alive),
/// [`now_unix_ms`](Self::now_unix_ms) (the clock reservations expire by).
/// Implementations:
/// [`ProcLiveness`] (reads `/proc`), [`FakeLiveness`] (for tests, with
/// injected deaths and pid reuse).
///
/// [`FakeLiveness`]: crate::testing::FakeLiveness
pub trait Liveness: Send + Sync + 'static {
    /// The start time (clock ticks since boot, field 22 of
    /// `/proc/<pid>/stat`) of the live process `pid`, or `None` if there is
    /// none (a zombie counts as dead).
    fn start_time(&self, pid: u32) -> Option<u64>;

    /// Whether `pid` is alive and started at `start_time`, i.e. is the same
    /// process and not a later one that reuses the pid.
    fn is_same_process(&self, pid: u32, start_time: u64) -> bool {
        self.start_time(pid) == Some(start_time)
    }

    /// Whether some live process has pid `pid`, whatever its start time:
    /// the liveness of a legacy allocation, which records none.
    fn is_alive(&self, pid: u32) -> bool {
        self.start_time(pid).is_some()
    }

    /// The time now, in milliseconds since the Unix epoch: what a
    /// reservation's `pending_until` is compared with. Default: the system
    /// clock (a clock before 1970 reads as 0).
    fn now_unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl<T: Liveness> Liveness for Arc<T> {
    fn start_time(&self, pid: u32) -> Option<u64> {
        (**self).start_time(pid)
    }

    fn is_same_process(&self, pid: u32, start_time: u64) -> bool {
        (**self).is_same_process(pid, start_time)
    }

    fn is_alive(&self, pid: u32) -> bool {
        (**self).is_alive(pid)
    }

    fn now_unix_ms(&self) -> u64 {
        (**self).now_unix_ms()
    }
}

/// Liveness from `/proc/<pid>/stat`, with `kill(pid, 0)` as the fallback.
///
/// [`start_time`](Liveness::start_time) is `None` unless the stat line can be
/// read and parsed and the state is not zombie (`Z`) or dead (`X`).
///
/// [`is_same_process`](Liveness::is_same_process) compares start times when
/// the stat line is readable. When it is not (the process is gone, `/proc` is
/// not mounted, or hides the process), it asks the kernel with
/// `kill(pid, 0)`: no such process means dead; a process that exists but
/// whose start time cannot be read is presumed to be the recorded one, since
/// wrongly reclaiming a live pod's scope would let two pods write the same
/// files.
///
/// Pids are only meaningful within one pid namespace: every process sharing a
/// table must see the same `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcLiveness;

/// What the stat line says.
struct Stat {
    running: bool,
    start_time: u64,
}

fn read_stat(pid: u32) -> io::Result<Option<Stat>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(parse_stat(&text))
}

/// Parses `/proc/<pid>/stat`. Field 2, the command name, is in parentheses
/// and may itself contain spaces and `)`, so the fields are counted after the
/// last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state); the start time is field 22.
    let state = fields.next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat {
        running: !matches!(state, "Z" | "X" | "x"),
        start_time,
    })
}

/// `kill(pid, 0)`: whether a process with this pid exists (zombies
/// included).
fn exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

/// Pid 0 and pids beyond `i32::MAX` name no process (`kill(0, _)` would
/// even address the caller's process group).
fn is_plausible(pid: u32) -> bool {
    pid != 0 && i32::try_from(pid).is_ok()
}

impl Liveness for ProcLiveness {
    fn start_time(&self, pid: u32) -> Option<u64> {
        if !is_plausible(pid) {
            return None;
        }
        match read_stat(pid) {
            Ok(Some(stat)) if stat.running => Some(stat.start_time),
            _ => None,
        }
    }

    fn is_same_process(&self, pid: u32, start_time: u64) -> bool {
        if !is_plausible(pid) {
            return false;
        }
        match read_stat(pid) {
            Ok(Some(stat)) => stat.running && stat.start_time == start_time,
            Ok(None) | Err(_) => exists(pid),
        }
    }

    /// As [`is_same_process`](Liveness::is_same_process) without the start
    /// time: a running process by the stat line, else `kill(pid, 0)`.
    fn is_alive(&self, pid: u32) -> bool {
        if !is_plausible(pid) {
            return false;
        }
        match read_stat(pid) {
            Ok(Some(stat)) => stat.running,
            Ok(None) | Err(_) => exists(pid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_after_the_last_parenthesis() {
        let line = "4242 (a) b) c (d)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = parse_stat(line).unwrap();
        assert!(stat.running);
        assert_eq!(stat.start_time, 987654);
        let zombie = line.replace(") S ", ") Z ");
        assert!(!parse_stat(&zombie).unwrap().running);
        assert!(parse_stat("12 (x) S 1 2").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_is_live_and_pid_zero_is_not() {
        let me = std::process::id();
        let start = ProcLiveness.start_time(me).unwrap();
        assert!(ProcLiveness.is_same_process(me, start));
        assert!(!ProcLiveness.is_same_process(me, start + 1));
        assert_eq!(ProcLiveness.start_time(0), None);
        assert!(!ProcLiveness.is_same_process(0, start));
        assert!(!ProcLiveness.is_same_process(u32::MAX, start));
    }
}

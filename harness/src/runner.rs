//! Runs one QEMU instance with the serial port on piped stdio, a timeout, and
//! (optionally) a `query-pci` plus human-monitor commands over QMP while the kernel
//! holds.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::oracle;
use crate::serial::HOLDING_MARKER;

/// Keep at most this much serial output (a runaway kernel must not eat the host).
const SERIAL_CAP: usize = 16 << 20;

/// How QEMU ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Status(i32),
    Signal(i32),
    /// Killed by the harness after the timeout.
    TimedOut,
}

impl Exit {
    fn from_status(s: ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Status(c),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Status(-1),
        }
    }
}

/// Chooses the monitor commands to run at `holding:` from the serial output so far.
pub type MonitorPlan<'a> = dyn Fn(&str) -> Vec<String> + 'a;

/// The result of `query-pci` taken while the kernel held.
pub type OracleView = oracle::QueryPci;

#[derive(Clone, Debug)]
pub struct Outcome {
    pub exit: Exit,
    pub serial: String,
    pub stderr: String,
    /// `None` if no oracle was requested; `Some(Err)` says why it is missing.
    pub oracle: Option<Result<OracleView, String>>,
    pub elapsed: Duration,
}

pub struct RunRequest<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub timeout: Duration,
    /// QMP socket to query when the kernel prints `holding:` (needs `hold` in the cmdline).
    pub qmp_socket: Option<PathBuf>,
    /// Human-monitor commands to run after `query-pci`, chosen from the serial output
    /// up to `holding:` (e.g. `xp` reads of buffers whose addresses the kernel printed).
    pub monitor: Option<&'a MonitorPlan<'a>>,
    /// Monitor commands chosen from the replies so far, in rounds after `monitor` (e.g.
    /// a walk of the IOMMU's tables: a register, then the entries it leads to).
    pub follow_up: Option<&'a oracle::FollowUp<'a>>,
}

enum Event {
    Data(Vec<u8>),
    Eof,
}

/// Runs QEMU to completion (or the timeout). Never panics on odd QEMU behaviour:
/// failures to spawn are returned as `Err`, everything else ends up in `Outcome`.
pub fn run(req: &RunRequest<'_>) -> Result<Outcome, String> {
    let start = Instant::now();
    let deadline = start + req.timeout;
    let mut child = Command::new(req.program)
        .args(req.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", req.program.display()))?;

    let (tx, rx) = mpsc::channel();
    let stdout_thread = child.stdout.take().map(|mut out| {
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match out.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(Event::Data(buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(Event::Eof);
        })
    });
    let stderr_thread = child.stderr.take().map(|mut err| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        })
    });
    let mut stdin = child.stdin.take();

    let mut serial: Vec<u8> = Vec::new();
    let mut released = false;
    let mut oracle = req
        .qmp_socket
        .as_ref()
        .map(|_| Err(format!("the kernel never printed `{HOLDING_MARKER}`")));
    let mut timed_out = false;

    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(Event::Data(d)) => {
                let room = SERIAL_CAP.saturating_sub(serial.len());
                serial.extend_from_slice(&d[..d.len().min(room)]);
                if !released && contains(&serial, HOLDING_MARKER.as_bytes()) {
                    released = true;
                    if let Some(sock) = &req.qmp_socket {
                        let budget = deadline
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_secs(15));
                        let commands = req
                            .monitor
                            .map(|f| f(&String::from_utf8_lossy(&serial)))
                            .unwrap_or_default();
                        oracle = Some(oracle::query(sock, budget, &commands, req.follow_up));
                    }
                    // Any one byte lets the kernel go on.
                    if let Some(s) = stdin.as_mut() {
                        let _ = s.write_all(b"\n").and_then(|()| s.flush());
                    }
                }
            }
            Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }

    let exit = if timed_out {
        kill(&mut child);
        Exit::TimedOut
    } else {
        // stdout closed: QEMU is exiting; wait for it within the deadline.
        wait_until(&mut child, deadline).unwrap_or_else(|| {
            kill(&mut child);
            Exit::TimedOut
        })
    };
    drop(stdin);
    if let Some(t) = stdout_thread {
        let _ = t.join();
    }
    // Data that arrived after we stopped listening (e.g. during the kill).
    while let Ok(Event::Data(d)) = rx.try_recv() {
        let room = SERIAL_CAP.saturating_sub(serial.len());
        serial.extend_from_slice(&d[..d.len().min(room)]);
    }
    let stderr = stderr_thread
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    if let Some(Err(reason)) = &mut oracle {
        if timed_out && !released {
            reason.push_str(" before the timeout");
        }
    }
    Ok(Outcome {
        exit,
        serial: String::from_utf8_lossy(&serial).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        oracle,
        elapsed: start.elapsed(),
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_until(child: &mut Child, deadline: Instant) -> Option<Exit> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(Exit::from_status(status)),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> Outcome {
        let args = vec!["-c".to_string(), script.to_string()];
        run(&RunRequest {
            program: Path::new("/bin/sh"),
            args: &args,
            timeout,
            qmp_socket: None,
            monitor: None,
            follow_up: None,
        })
        .unwrap()
    }

    #[test]
    fn captures_output_and_status() {
        let o = sh(
            "printf 'a\\r\\nb'; echo oops >&2; exit 33",
            Duration::from_secs(10),
        );
        assert_eq!(o.exit, Exit::Status(33));
        assert_eq!(o.serial, "a\r\nb");
        assert_eq!(o.stderr, "oops\n");
        assert!(o.oracle.is_none());
    }

    #[test]
    fn releases_a_holding_kernel() {
        // The "kernel" waits for one byte after printing holding:.
        let o = sh(
            "echo 'holding: press a key'; read x; echo released; exit 35",
            Duration::from_secs(10),
        );
        assert_eq!(o.exit, Exit::Status(35));
        assert!(o.serial.ends_with("released\n"), "{:?}", o.serial);
    }

    #[test]
    fn kills_on_timeout() {
        let t = Instant::now();
        let o = sh("echo started; exec sleep 30", Duration::from_millis(300));
        assert_eq!(o.exit, Exit::TimedOut);
        assert_eq!(o.serial, "started\n");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_program_is_an_error() {
        let r = run(&RunRequest {
            program: Path::new("/nonexistent/qemu"),
            args: &[],
            timeout: Duration::from_secs(1),
            qmp_socket: None,
            monitor: None,
            follow_up: None,
        });
        assert!(r.unwrap_err().contains("cannot start"));
    }

    #[test]
    fn oracle_failure_is_reported_not_fatal() {
        let args = vec![
            "-c".to_string(),
            "echo 'dmatest 1 x: a=1'; echo 'holding:'; read x; exit 33".to_string(),
        ];
        // The monitor commands are chosen from the serial output seen at `holding:`.
        let seen = std::cell::RefCell::new(String::new());
        let monitor = |serial: &str| {
            *seen.borrow_mut() = serial.to_string();
            vec!["xp /1xb 0x0".to_string()]
        };
        let o = run(&RunRequest {
            program: Path::new("/bin/sh"),
            args: &args,
            timeout: Duration::from_secs(10),
            qmp_socket: Some("/nonexistent/qmp.sock".into()),
            monitor: Some(&monitor),
            follow_up: None,
        })
        .unwrap();
        assert!(
            seen.borrow().starts_with("dmatest 1 x: a=1\n"),
            "{:?}",
            seen.borrow()
        );
        assert_eq!(o.exit, Exit::Status(33));
        let err = o.oracle.unwrap().unwrap_err();
        assert!(err.contains("cannot connect to QMP socket"), "{err}");
    }
}

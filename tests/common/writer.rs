//! A real initiator writing while the cluster fails under it: one qemu-io (QEMU's
//! libiscsi driver) fed `write -P` commands on stdin, its line-buffered output read by
//! a thread that timestamps every acknowledged write ("wrote ...") and every error. The
//! acknowledgements say exactly which writes the initiator saw GOOD for, so a test can
//! measure the longest stall and read every acknowledged write back.

use super::cluster::GW_IQN;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One write: `len` bytes of `pattern` at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOp {
    pub offset: u64,
    pub len: u64,
    pub pattern: u8,
}

/// `count` writes of 64 KiB, write i at i MiB + (i % 16) × 64 KiB with pattern
/// (i % 250) + 1: one write in every chunk, at a different place in each.
pub fn spread_writes(count: u64) -> Vec<WriteOp> {
    (0..count)
        .map(|i| WriteOp {
            offset: i * (1 << 20) + (i % 16) * (64 << 10),
            len: 64 << 10,
            pattern: (i % 250) as u8 + 1,
        })
        .collect()
}

#[derive(Default)]
struct Seen {
    /// (when, offset) of every "wrote" line.
    acks: Vec<(Instant, u64)>,
    /// (when, line) of every failed command.
    errors: Vec<(Instant, String)>,
    /// Everything qemu-io said, for failure messages.
    log: String,
}

pub struct Writer {
    child: Child,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<JoinHandle<()>>,
    ops: BTreeMap<u64, WriteOp>,
    pub started: Instant,
}

/// What the writer saw, once it has finished.
pub struct WriteReport {
    /// Acknowledged writes in acknowledgement order, with when.
    pub acked: Vec<(Instant, WriteOp)>,
    pub errors: Vec<(Instant, String)>,
    pub started: Instant,
    pub log: String,
}

impl Writer {
    /// Starts qemu-io on LUN `lun` of the gateway at `portal` and feeds it `ops`, at
    /// most `window` commands ahead of the answers (qemu-io runs one at a time; the
    /// window only bounds how far the feeder runs ahead, so a test acting on the ack
    /// count acts at a known point).
    pub fn start(portal: SocketAddr, lun: u32, ops: Vec<WriteOp>, window: usize) -> Writer {
        let url = format!("iscsi://{portal}/{GW_IQN}/{lun}");
        let mut child = Command::new("stdbuf")
            .args(["-oL", "-eL", "qemu-io", "-f", "raw", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start stdbuf qemu-io: {e}"));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut threads = Vec::new();

        let stdout = child.stdout.take().unwrap();
        let sink = seen.clone();
        threads.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let now = Instant::now();
                let mut s = sink.lock().unwrap();
                s.log.push_str(&line);
                s.log.push('\n');
                // The prompt "qemu-io> " is printed without a newline, so it prefixes
                // the next answer.
                if let Some(offset) = wrote_offset(&line) {
                    s.acks.push((now, offset));
                } else if line.contains("failed") {
                    s.errors.push((now, line));
                }
            }
        }));
        let stderr = child.stderr.take().unwrap();
        let sink = seen.clone();
        threads.push(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.log.push_str("stderr: ");
                s.log.push_str(&line);
                s.log.push('\n');
            }
        }));

        let mut stdin = child.stdin.take().unwrap();
        let sink = seen.clone();
        let cmds: Vec<String> = ops
            .iter()
            .map(|o| format!("write -P {} {} {}\n", o.pattern, o.offset, o.len))
            .collect();
        threads.push(std::thread::spawn(move || {
            for (sent, cmd) in cmds.iter().enumerate() {
                loop {
                    let done = {
                        let s = sink.lock().unwrap();
                        s.acks.len() + s.errors.len()
                    };
                    if sent < done + window {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                if stdin.write_all(cmd.as_bytes()).is_err() {
                    return; // qemu-io is gone; the report says why.
                }
            }
            // Dropping stdin ends qemu-io once it has run every command.
        }));

        Writer {
            child,
            seen,
            threads,
            ops: ops.into_iter().map(|o| (o.offset, o)).collect(),
            started: Instant::now(),
        }
    }

    pub fn acked(&self) -> usize {
        self.seen.lock().unwrap().acks.len()
    }

    pub fn errors(&self) -> usize {
        self.seen.lock().unwrap().errors.len()
    }

    /// Waits until `n` writes are acknowledged; panics with qemu-io's output if that
    /// takes longer than `within` or qemu-io exits first.
    pub fn wait_acked(&mut self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.acked() < n {
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let s = self.seen.lock().unwrap();
                panic!(
                    "the writer has {} of {n} writes acknowledged after {within:?} (qemu-io {}); its output ends:\n{}",
                    s.acks.len(),
                    exited.map_or("still running".to_string(), |e| e.to_string()),
                    tail(&s.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for qemu-io to run every command and exit (killing it after `within`).
    pub fn finish(mut self, within: Duration) -> WriteReport {
        let deadline = Instant::now() + within;
        let mut timed_out = false;
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                timed_out = true;
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let s = std::mem::take(&mut *self.seen.lock().unwrap());
        assert!(
            !timed_out,
            "the writer did not finish within {within:?}: {} acknowledged, {} errors; its output ends:\n{}",
            s.acks.len(),
            s.errors.len(),
            tail(&s.log, 30)
        );
        let acked =
            s.acks
                .iter()
                .map(|&(t, off)| {
                    let op = *self.ops.get(&off).unwrap_or_else(|| {
                        panic!("qemu-io acknowledged a write at {off} never sent")
                    });
                    (t, op)
                })
                .collect();
        WriteReport {
            acked,
            errors: s.errors,
            started: self.started,
            log: s.log,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WriteReport {
    /// The longest gap between two consecutive acknowledgements (the initiator's
    /// login before the first one does not count), and when that gap began.
    pub fn longest_stall(&self) -> (Duration, Instant) {
        let mut worst = (Duration::ZERO, self.started);
        for pair in self.acked.windows(2) {
            let gap = pair[1].0.saturating_duration_since(pair[0].0);
            if gap > worst.0 {
                worst = (gap, pair[0].0);
            }
        }
        worst
    }

    /// Acknowledged after `t`.
    pub fn acked_after(&self, t: Instant) -> usize {
        self.acked.iter().filter(|(at, _)| *at > t).count()
    }

    /// The first lines of what went wrong, for assertion messages.
    pub fn error_summary(&self) -> String {
        self.errors
            .iter()
            .take(10)
            .map(|(t, l)| format!("+{:.3}s {l}", t.duration_since(self.started).as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn wrote_offset(line: &str) -> Option<u64> {
    let rest = &line[line.find("wrote ")?..];
    let at = rest.find(" bytes at offset ")?;
    rest[at + " bytes at offset ".len()..].trim().parse().ok()
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The data the volume must hold: offset → the last acknowledged write there.
#[derive(Debug, Default, Clone)]
pub struct Expected(pub BTreeMap<u64, WriteOp>);

impl Expected {
    pub fn record(&mut self, op: WriteOp) {
        self.0.insert(op.offset, op);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Runs qemu-io with `commands` on stdin against LUN `lun`; returns everything it
/// printed (without judging its exit status: a failed last command makes it 1).
/// Panics if it has not finished within `within`.
pub fn qemu_io_raw(portal: SocketAddr, lun: u32, commands: String, within: Duration) -> String {
    let url = format!("iscsi://{portal}/{GW_IQN}/{lun}");
    let mut child = Command::new("qemu-io")
        .args(["-f", "raw", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start qemu-io: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(commands.as_bytes());
    });
    let out = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
    let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
    for stream in [stdout, stderr] {
        let sink = out.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut o = sink.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        }));
    }
    let deadline = Instant::now() + within;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = feeder.join();
            panic!(
                "qemu-io did not finish within {within:?}; its output ends:\n{}",
                tail(&out.lock().unwrap(), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = feeder.join();
    for r in readers {
        let _ = r.join();
    }
    let text = out.lock().unwrap().clone();
    text
}

/// Writes `ops` through the gateway (no failure expected) and records them.
pub fn write_all(portal: SocketAddr, lun: u32, ops: &[WriteOp], expected: &mut Expected) {
    let cmds: String = ops
        .iter()
        .map(|o| format!("write -P {} {} {}\n", o.pattern, o.offset, o.len))
        .collect();
    let out = qemu_io_raw(portal, lun, cmds, Duration::from_secs(120));
    let wrote = out.lines().filter_map(wrote_offset).count();
    assert_eq!(
        wrote,
        ops.len(),
        "only {wrote} of {} writes were acknowledged:\n{}",
        ops.len(),
        out.lines()
            .filter(|l| l.contains("failed") || l.contains("rror"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for o in ops {
        expected.record(*o);
    }
}

/// Reads every expected write back through the gateway with `read -P` and panics,
/// listing the first differences, unless all of them verify.
pub fn verify(portal: SocketAddr, lun: u32, expected: &Expected) {
    let cmds: String = expected
        .0
        .values()
        .map(|o| format!("read -P {} {} {}\n", o.pattern, o.offset, o.len))
        .collect();
    let out = qemu_io_raw(portal, lun, cmds, Duration::from_secs(300));
    let bad: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("Pattern verification failed") || l.contains("read failed"))
        .collect();
    let read = out
        .lines()
        .filter(|l| l.contains("read ") && l.contains(" bytes at offset "))
        .count();
    assert!(
        bad.is_empty() && read == expected.len(),
        "read-back of {} acknowledged writes: {read} read, {} differ or fail; first:\n{}\n(output ends:\n{})",
        expected.len(),
        bad.len(),
        bad.iter().take(20).copied().collect::<Vec<_>>().join("\n"),
        tail(&out, 10)
    );
    println!(
        "read back {} acknowledged writes: all verify",
        expected.len()
    );
}

//! A child process of ours (`dreadnought mdm|sds|target|up`) whose log is captured
//! and whose ready line tells where it listens. Killed (SIGKILL) on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
    name: String,
}

impl Proc {
    /// Runs `dreadnought ARGS` and waits for a log line containing `ready`.
    pub fn dreadnought(args: &[&str], ready: &str) -> Proc {
        Self::dreadnought_with_log(args, ready, "info")
    }

    /// As [`Proc::dreadnought`] with another `RUST_LOG` level.
    pub fn dreadnought_with_log(args: &[&str], ready: &str, level: &str) -> Proc {
        Self::spawn(&[], args, ready, level)
    }

    /// As [`Proc::dreadnought`] inside network namespace `ns` (`ip netns exec`, which
    /// execs the binary, so the pid and SIGKILL are still the binary's own).
    pub fn dreadnought_in_netns(ns: &str, args: &[&str], ready: &str) -> Proc {
        Self::spawn(&["ip", "netns", "exec", ns], args, ready, "info")
    }

    /// Runs `PREFIX... dreadnought ARGS` and waits for a log line containing `ready`.
    fn spawn(prefix: &[&str], args: &[&str], ready: &str, level: &str) -> Proc {
        let bin = env!("CARGO_BIN_EXE_dreadnought");
        let mut argv: Vec<&str> = prefix.to_vec();
        argv.push(bin);
        argv.extend_from_slice(args);
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .env("RUST_LOG", level)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let p = Proc {
            child,
            log,
            name: format!(
                "{}{} {}",
                prefix.iter().map(|p| format!("{p} ")).collect::<String>(),
                Path::new(bin).display(),
                args.join(" ")
            ),
        };
        p.wait_for(ready, Duration::from_secs(60));
        p
    }

    /// The process id (for /proc/<pid>/ counters).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the log to contain `needle`; panics with the log if it does not.
    pub fn wait_for(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let mut child_done = false;
        loop {
            if self.log().contains(needle) {
                return;
            }
            if child_done || Instant::now() > deadline {
                panic!("{} never logged {needle:?}:\n{}", self.name, self.log());
            }
            // One more look after exit: the reader thread may lag the child.
            child_done = self.has_exited();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn has_exited(&self) -> bool {
        // try_wait needs &mut; peek through /proc instead.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        stat.map(|s| s.contains(") Z ")).unwrap_or(true)
    }

    /// The value of `key=` on the first log line containing `line`.
    pub fn field(&self, line: &str, key: &str) -> String {
        let log = self.log();
        let l = log
            .lines()
            .find(|l| l.contains(line))
            .unwrap_or_else(|| panic!("no {line:?} in log:\n{log}"));
        let pat = format!("{key}=");
        let i = l.find(&pat).unwrap_or_else(|| panic!("no {key}= in {l:?}"));
        l[i + pat.len()..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ',')
            .collect()
    }

    pub fn addr(&self, line: &str, key: &str) -> SocketAddr {
        self.field(line, key).parse().unwrap()
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

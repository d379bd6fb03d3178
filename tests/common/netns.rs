//! A network namespace of our own joined to the host by a veth pair, for partition
//! tests: processes run inside with `ip netns exec`, and the link can be cut and
//! restored. Everything it creates (the namespace, both veth ends) is removed on drop,
//! also when the test panics. Needs root and `ip`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Netns {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
    /// The host end of the veth pair.
    pub host_if: String,
    /// The end inside the namespace.
    pub ns_if: String,
    /// The host end's address: the host side listens here so the namespace reaches it.
    pub host_ip: Ipv4Addr,
    /// The namespace end's address.
    pub ns_ip: Ipv4Addr,
}

/// Why namespaces are not available here, or None when they are.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { geteuid() };
    if euid != 0 {
        return Some(format!("not root (euid {euid})"));
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip`: {e}")),
    }
}

extern "C" {
    fn geteuid() -> u32;
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// A fresh namespace with a /30 of 10.213.0.0/16 (the subnet picked from the
    /// process id and a counter, so parallel tests and runs do not collide): the
    /// host end is .1, the namespace end .2, both up, loopback up inside.
    pub fn create() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // 16384 /30 subnets in 10.213.0.0/16; pid and counter pick one.
        let slot = (pid.wrapping_mul(7).wrapping_add(n * 131)) % 16384;
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + slot * 4;
        // Interface names are at most 15 bytes.
        let tag = format!("{:x}", (pid << 4 | (n & 0xF)) & 0xFF_FFFF);
        let ns = Netns {
            name: format!("dnt-{pid}-{n}"),
            host_if: format!("dnh{tag}"),
            ns_if: format!("dnn{tag}"),
            host_ip: Ipv4Addr::from(base + 1),
            ns_ip: Ipv4Addr::from(base + 2),
        };
        // From here on Drop cleans up whatever part was made.
        ns.setup()
            .unwrap_or_else(|e| panic!("cannot set up namespace {}: {e}", ns.name));
        ns
    }

    fn setup(&self) -> Result<(), String> {
        let host = format!("{}/30", self.host_ip);
        let inside = format!("{}/30", self.ns_ip);
        ip(&["netns", "add", &self.name])?;
        ip(&[
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &self.ns_if,
        ])?;
        ip(&["link", "set", &self.ns_if, "netns", &self.name])?;
        ip(&["addr", "add", &host, "dev", &self.host_if])?;
        ip(&["link", "set", &self.host_if, "up"])?;
        self.exec(&["ip", "addr", "add", &inside, "dev", &self.ns_if])?;
        self.exec(&["ip", "link", "set", &self.ns_if, "up"])?;
        self.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Runs `ip netns exec NAME ARGS`.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Cuts the link: the namespace's end goes down, so nothing passes either way. (The
    /// host end stays administratively up: taking it down would remove the host's own
    /// address with it, and the host-side processes listen on that address.)
    pub fn cut(&self) {
        self.exec(&["ip", "link", "set", &self.ns_if, "down"])
            .unwrap_or_else(|e| panic!("cannot cut the link: {e}"));
    }

    /// Restores the link cut by [`Netns::cut`] (the address comes back with it).
    pub fn restore(&self) {
        self.exec(&["ip", "link", "set", &self.ns_if, "up"])
            .unwrap_or_else(|e| panic!("cannot restore the link: {e}"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, which takes the peer with it;
        // the explicit delete covers a setup that failed before the move.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

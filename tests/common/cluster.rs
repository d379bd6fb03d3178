//! A cluster as separate processes on loopback (MDM, SDS, gateways) driven through
//! `scli`, for the integration tests.

use super::proc::Proc;
use super::Initiator;
use dreadnought::cluster::api::{
    Layout, MdmReply, MdmRequest, SdsControl, SdsControlReply, SdsInventory,
};
use dreadnought::cluster::chunk::ChunkClient;
use dreadnought::cluster::mdm_client;
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const GW_IQN: &str = "iqn.2026-11.io.dreadnought:gw1";

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub mdm: Option<Proc>,
    pub mdm_addr: SocketAddr,
    pub sds: Vec<Option<Proc>>,
    pub sds_addrs: Vec<SocketAddr>,
    /// The network namespace each SDS runs in (None: the host's).
    pub sds_netns: Vec<Option<String>>,
}

pub fn start_mdm(dir: &Path, listen: &str) -> (Proc, SocketAddr) {
    let data = dir.join("mdm");
    let p = Proc::dreadnought(
        &[
            "mdm",
            "--listen",
            listen,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "ready: MDM listening",
    );
    let a = p.addr("ready: MDM listening", "addr");
    (p, a)
}

pub fn start_sds(dir: &Path, i: usize, listen: &str) -> (Proc, SocketAddr) {
    start_sds_in(dir, i, listen, None, &[])
}

/// SDS number `i` (data in `dir/sds{i}`), inside network namespace `netns` if given,
/// with `extra` arguments.
pub fn start_sds_in(
    dir: &Path,
    i: usize,
    listen: &str,
    netns: Option<&str>,
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let data = dir.join(format!("sds{i}"));
    let mut args = vec![
        "sds",
        "--listen",
        listen,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let ready = "ready: SDS listening";
    let p = match netns {
        None => Proc::dreadnought(&args, ready),
        Some(ns) => Proc::dreadnought_in_netns(ns, &args, ready),
    };
    let a = p.addr("ready: SDS listening", "addr");
    (p, a)
}

impl Cluster {
    pub fn start(sds: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let (mdm, mdm_addr) = start_mdm(dir.path(), "127.0.0.1:0");
        let mut procs = Vec::new();
        let mut addrs = Vec::new();
        for i in 1..=sds {
            let (p, a) = start_sds(dir.path(), i, "127.0.0.1:0");
            procs.push(Some(p));
            addrs.push(a);
        }
        Cluster {
            dir,
            mdm: Some(mdm),
            mdm_addr,
            sds_netns: vec![None; procs.len()],
            sds: procs,
            sds_addrs: addrs,
        }
    }

    /// An MDM listening on `mdm_listen` and no SDS yet (add them with
    /// [`Cluster::spawn_sds`]).
    pub fn start_empty(mdm_listen: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let (mdm, mdm_addr) = start_mdm(dir.path(), mdm_listen);
        Cluster {
            dir,
            mdm: Some(mdm),
            mdm_addr,
            sds: Vec::new(),
            sds_addrs: Vec::new(),
            sds_netns: Vec::new(),
        }
    }

    /// Starts one more SDS process (not yet added to the MDM) listening on `listen`,
    /// inside `netns` if given; returns its index.
    pub fn spawn_sds(&mut self, listen: &str, netns: Option<&str>) -> usize {
        self.spawn_sds_with(listen, netns, &[])
    }

    /// As [`Cluster::spawn_sds`], with `extra` arguments (not kept for a restart).
    pub fn spawn_sds_with(&mut self, listen: &str, netns: Option<&str>, extra: &[&str]) -> usize {
        let i = self.sds.len();
        let (p, a) = start_sds_in(self.dir.path(), i + 1, listen, netns, extra);
        self.sds.push(Some(p));
        self.sds_addrs.push(a);
        self.sds_netns.push(netns.map(str::to_string));
        i
    }

    /// `sds` SDS in pd1/pool1 named sds1, sds2, ..., each with one sparse device of
    /// `device_bytes`.
    pub fn named_pool(sds: usize, device_bytes: u64) -> Cluster {
        let c = Cluster::start(sds);
        c.add_pool();
        for i in 0..sds {
            c.add_sds_to_pool(i, device_bytes);
        }
        c
    }

    /// Protection domain pd1 with storage pool pool1.
    pub fn add_pool(&self) {
        self.ok(&["--add_protection_domain", "--protection_domain_name", "pd1"]);
        self.ok(&[
            "--add_storage_pool",
            "--protection_domain_name",
            "pd1",
            "--storage_pool_name",
            "pool1",
        ]);
    }

    /// The name [`Cluster::add_sds_to_pool`] gives SDS `i`.
    pub fn sds_name(i: usize) -> String {
        format!("sds{}", i + 1)
    }

    /// `--add_sds` of SDS process `i` to pd1/pool1 as `sds{i+1}` with one new sparse
    /// device of `device_bytes`.
    pub fn add_sds_to_pool(&self, i: usize, device_bytes: u64) {
        let dev = self.device(&format!("dev{i}"), device_bytes);
        self.add_sds_with(i, &dev, Some(&Self::sds_name(i)));
    }

    /// `--add_sds` of SDS process `i` to pd1/pool1 with the device at `dev`, named
    /// `name` (or the MDM's default name).
    pub fn add_sds_with(&self, i: usize, dev: &Path, name: Option<&str>) {
        let ip = self.sds_addrs[i].to_string();
        let mut args = vec![
            "--add_sds",
            "--sds_ip",
            &ip,
            "--protection_domain_name",
            "pd1",
            "--device_name",
            dev.to_str().unwrap(),
            "--storage_pool_name",
            "pool1",
        ];
        if let Some(n) = name {
            args.extend(["--sds_name", n]);
        }
        self.ok(&args);
    }

    /// A sparse file to hand to an SDS as its device.
    pub fn device(&self, name: &str, size: u64) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    /// Runs scli against this MDM; returns (success, stdout + stderr).
    pub fn scli(&self, args: &[&str]) -> (bool, String) {
        let mdm = self.mdm_addr.to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_scli"))
            .args(["--mdm_ip", &mdm])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.scli(args);
        assert!(ok, "scli {args:?} failed:\n{text}");
        text
    }

    /// scli must refuse, naming every word of `names`, and change nothing.
    pub fn refused(&self, args: &[&str], names: &[&str]) {
        let before = self.state();
        let (ok, text) = self.scli(args);
        assert!(!ok, "scli {args:?} should have been refused:\n{text}");
        for n in names {
            assert!(
                text.contains(n),
                "refusal of {args:?} should name {n:?}:\n{text}"
            );
        }
        assert_eq!(before, self.state(), "refused {args:?} changed the cluster");
    }

    /// Everything the MDM knows, as JSON, for before/after comparisons.
    pub fn state(&self) -> String {
        [
            "--query_all_sds",
            "--query_all_volumes",
            "--query_all_sdc",
            "--query_cluster",
        ]
        .iter()
        .map(|q| self.ok(&[q, "--json"]))
        .collect::<Vec<_>>()
        .join("\n")
        // Liveness and usage are measured at query time; only the objects matter here.
        .lines()
        .filter(|l| !l.contains("\"state\"") && !l.contains("used"))
        .collect::<Vec<_>>()
        .join("\n")
    }

    pub fn kill9_mdm(&mut self) {
        self.mdm.take().unwrap().kill9();
    }

    pub fn restart_mdm(&mut self) {
        let (p, a) = start_mdm(self.dir.path(), &self.mdm_addr.to_string());
        assert_eq!(a, self.mdm_addr);
        self.mdm = Some(p);
    }

    pub fn kill9_sds(&mut self, i: usize) {
        self.sds[i].take().unwrap().kill9();
    }

    pub fn restart_sds(&mut self, i: usize) {
        let (p, a) = start_sds_in(
            self.dir.path(),
            i + 1,
            &self.sds_addrs[i].to_string(),
            self.sds_netns.get(i).and_then(|n| n.as_deref()),
            &[],
        );
        assert_eq!(a, self.sds_addrs[i]);
        self.sds[i] = Some(p);
    }

    /// A gateway named gw1 whose target exports the mapped volumes, in demo mode or
    /// under the initiator map.
    pub fn gateway(&self, demo: bool) -> (Proc, SocketAddr) {
        self.gateway_named("gw1", demo)
    }

    /// Another gateway (SDC `name`, its own config and data directory) exporting the
    /// same target name: several gateways serving the same volumes.
    pub fn gateway_named(&self, name: &str, demo: bool) -> (Proc, SocketAddr) {
        self.gateway_at(name, demo, None)
    }

    /// As [`Cluster::gateway_named`], listening on `listen` when given (a gateway
    /// restarted on the same portal).
    pub fn gateway_at(
        &self,
        name: &str,
        demo: bool,
        listen: Option<SocketAddr>,
    ) -> (Proc, SocketAddr) {
        // gw1 keeps the paths it always had.
        let (cfg, data) = match name {
            "gw1" => ("gateway.toml".to_string(), "gw".to_string()),
            _ => (format!("gateway-{name}.toml"), name.to_string()),
        };
        let cfg = self.dir.path().join(cfg);
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"{}\"\n[iscsi]\nlisten = [\"127.0.0.1:0\"]\n[[target]]\nname = \"{GW_IQN}\"\nmapped = true\ndemo_mode = {demo}\n",
                self.dir.path().join(data).display()
            ),
        )
        .unwrap();
        let mdm = self.mdm_addr.to_string();
        let listen = listen.map(|a| a.to_string());
        let mut args = vec![
            "target",
            "--mdm",
            &mdm,
            "--name",
            name,
            "--sdc-ip",
            "127.0.0.1",
            "--config",
            cfg.to_str().unwrap(),
        ];
        if let Some(l) = &listen {
            args.extend(["--listen", l.as_str()]);
        }
        let p = Proc::dreadnought(&args, "ready: iSCSI target listening");
        let a = p.addr("ready: iSCSI target listening", "portals");
        (p, a)
    }

    /// Two SDS in pd1/pool1 and one thin 64 MiB volume, "shared", mapped to every
    /// host of `hosts` (name, iSCSI name) at LUN 0.
    pub fn shared_volume(hosts: &[(&str, &str)]) -> Cluster {
        let c = Cluster::with_pool(2, 1 << 30);
        c.add_volume("shared", "0.0625", &["--thin_provisioned"]);
        for (name, iqn) in hosts {
            c.add_host(name, iqn);
            c.map(name, "shared", &[]);
        }
        c
    }

    /// `sds` SDS in pd1/pool1, each with one sparse device of `device_bytes`.
    pub fn with_pool(sds: usize, device_bytes: u64) -> Cluster {
        let c = Cluster::start(sds);
        c.ok(&["--add_protection_domain", "--protection_domain_name", "pd1"]);
        c.ok(&[
            "--add_storage_pool",
            "--protection_domain_name",
            "pd1",
            "--storage_pool_name",
            "pool1",
        ]);
        for i in 0..sds {
            let dev = c.device(&format!("dev{i}"), device_bytes);
            c.add_sds_with(i, &dev, None);
        }
        c
    }

    /// A volume of `size_gb` in pd1/pool1 (thin unless `extra` says otherwise).
    pub fn add_volume(&self, name: &str, size_gb: &str, extra: &[&str]) {
        let mut args = vec![
            "--add_volume",
            "--protection_domain_name",
            "pd1",
            "--storage_pool_name",
            "pool1",
            "--size_gb",
            size_gb,
            "--volume_name",
            name,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    pub fn add_host(&self, name: &str, iqn: &str) {
        self.ok(&[
            "--add_scsi_initiator",
            "--initiator_name",
            name,
            "--iqn",
            iqn,
        ]);
    }

    /// Maps `volume` to host `host` (`extra`: --lun, --access_mode).
    pub fn map(&self, host: &str, volume: &str, extra: &[&str]) {
        let mut args = vec![
            "--map_volume_to_scsi_initiator",
            "--volume_name",
            volume,
            "--initiator_name",
            host,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// Every chunk copy each SDS reports holding, from its own tables.
    pub fn inventories(&self) -> Vec<Vec<(u64, u64)>> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        self.sds_addrs
            .iter()
            .map(|a| {
                let reply = rt
                    .block_on(ChunkClient::new(*a).control(&SdsControl::Inventory))
                    .unwrap();
                let SdsControlReply::Inventory(inv) = reply else {
                    panic!("unexpected inventory reply {reply:?}")
                };
                inv.devices.into_iter().flat_map(|d| d.chunks).collect()
            })
            .collect()
    }
}

/// The pool every failure test uses.
pub const POOL_ARGS: [&str; 4] = [
    "--protection_domain_name",
    "pd1",
    "--storage_pool_name",
    "pool1",
];

impl Cluster {
    /// scli's `--json` answer to `args`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("scli {all:?} printed no JSON ({e}):\n{text}"))
    }

    /// `--query_storage_pool` of pd1/pool1 as JSON.
    pub fn pool(&self) -> Value {
        let mut args = vec!["--query_storage_pool"];
        args.extend(POOL_ARGS);
        self.json(&args)
    }

    /// The state (`Connected`, `Down`, ...) the MDM shows for the SDS named `name`,
    /// or None when it no longer lists it.
    pub fn sds_state(&self, name: &str) -> Option<String> {
        let all = self.json(&["--query_all_sds"]);
        all.as_array()
            .expect("--query_all_sds --json is an array")
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["state"].as_str().unwrap_or("?").to_string())
    }

    /// The MDM's id of the SDS named `name`.
    pub fn sds_id(&self, name: &str) -> u64 {
        let all = self.json(&["--query_all_sds"]);
        let s = all
            .as_array()
            .expect("--query_all_sds --json is an array")
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no SDS {name}: {all}"));
        hex(&s["id"])
    }

    /// The MDM's id of volume `name`.
    pub fn volume_id(&self, name: &str) -> u64 {
        hex(&self.json(&["--query_volume", "--volume_name", name])["id"])
    }

    /// The volume's layout, as a gateway gets it.
    pub fn layout(&self, volume_id: u64) -> Layout {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let reply = rt
            .block_on(mdm_client::ask(
                &self.mdm_addr.to_string(),
                &MdmRequest::GetLayout { volume_id },
                Duration::from_secs(10),
            ))
            .unwrap_or_else(|e| panic!("GetLayout: {e}"));
        match reply {
            MdmReply::Layout(l) => l,
            other => panic!("GetLayout answered {other:?}"),
        }
    }

    /// Sets the rebuild (`rebalance` false) or rebalance policy of pd1/pool1; `extra`
    /// carries --concurrent_io_limit or --bandwidth_limit_kbps.
    pub fn set_policy(&self, rebalance: bool, policy: &str, extra: &[&str]) {
        let cmd = if rebalance {
            "--set_rebalance_policy"
        } else {
            "--set_rebuild_policy"
        };
        let mut args = vec![cmd];
        args.extend(POOL_ARGS);
        args.extend(["--policy", policy]);
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// What the MDM says of the SDS, the pool and its recent events: printed when a
    /// wait times out.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for args in [
            vec!["--query_all_sds", "--json"],
            [
                vec!["--query_storage_pool"],
                POOL_ARGS.to_vec(),
                vec!["--json"],
            ]
            .concat(),
            vec!["--query_cluster", "--json"],
        ] {
            let (_, text) = self.scli(&args);
            out.push_str(&format!("scli {}:\n{text}\n", args.join(" ")));
        }
        out
    }

    /// Polls `ready` every 500 ms until it says yes; panics after `within` with
    /// `what`, the last thing `ready` reported and the MDM's view.
    pub fn wait_until(
        &self,
        what: &str,
        within: Duration,
        mut ready: impl FnMut(&Cluster) -> Result<(), String>,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let last = match ready(self) {
                Ok(()) => return start.elapsed(),
                Err(why) => why,
            };
            if start.elapsed() > within {
                panic!(
                    "timed out after {within:?} waiting for {what}: {last}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// One SDS's inventory from its own tables (Err if it cannot be asked or refuses,
    /// e.g. after it was released).
    pub fn inventory(&self, i: usize) -> Result<SdsInventory, String> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = ChunkClient::new(self.sds_addrs[i]);
        let ask = client.control(&SdsControl::Inventory);
        match rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), ask).await }) {
            Err(_) => Err("no answer within 5 s".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(SdsControlReply::Inventory(inv))) => Ok(inv),
            Ok(Ok(other)) => Err(format!("unexpected inventory reply {other:?}")),
        }
    }
}

/// An id as scli's JSON prints it (16 hex digits).
pub fn hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{v} is not a hex id string"));
    u64::from_str_radix(s, 16).unwrap_or_else(|e| panic!("{s} is not a hex id: {e}"))
}

/// The number at JSON pointer `ptr` (e.g. "/health/degraded_bytes") of `v`.
pub fn num(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {ptr} in {v}"))
}

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it right after).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Runs qemu-io commands (one per line) against a LUN; returns its output.
pub fn qemu_io(portal: SocketAddr, lun: u32, commands: &str) -> String {
    let url = format!("iscsi://{portal}/{GW_IQN}/{lun}");
    run_qemu_io(&["-f", "raw", &url], commands)
}

/// Like [`qemu_io`], logged in as `initiator`.
pub fn qemu_io_as(portal: SocketAddr, initiator: &str, lun: u32, commands: &str) -> String {
    let opts = format!(
        "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={portal},file.target={GW_IQN},file.lun={lun},file.initiator-name={initiator}"
    );
    run_qemu_io(&["--image-opts", &opts], commands)
}

fn run_qemu_io(args: &[&str], commands: &str) -> String {
    let mut child = Command::new("qemu-io")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let cmds = commands.to_string();
    let feeder = std::thread::spawn(move || {
        stdin.write_all(cmds.as_bytes()).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-io failed:\n{text}");
    text
}

/// A `dreadnought up` with a cluster of `sds` SDS and one 64 MiB pool volume `demo0`
/// behind target GW_IQN (mapped), in `dir`; returns it with its iSCSI portal.
pub fn up(dir: &Path, sds: usize, demo: bool) -> (Proc, SocketAddr) {
    let cfg = dir.join("dreadnought.toml");
    if !cfg.exists() {
        let listen = vec!["\"127.0.0.1:0\""; sds].join(", ");
        std::fs::write(
            &cfg,
            format!(
                r#"data_dir = "{}"
[iscsi]
listen = ["127.0.0.1:0"]
[[target]]
name = "{GW_IQN}"
demo_mode = {demo}
mapped = true
[cluster]
mdm_listen = "127.0.0.1:0"
sds_listen = [{listen}]
device_size = "1GiB"
[[cluster.volume]]
name = "demo0"
size = "64MiB"
"#,
                dir.join("data").display()
            ),
        )
        .unwrap();
    }
    let ready = "ready: iSCSI target listening";
    let p = Proc::dreadnought(&["up", "--config", cfg.to_str().unwrap()], ready);
    let portal = p.addr(ready, "portals");
    (p, portal)
}

/// A session as `initiator` on `portal` once the gateway admits it (it follows the
/// MDM's map within about a second), past its power-on unit attention.
pub fn logged_in(portal: SocketAddr, initiator: &str) -> Initiator {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut i = Initiator::connect(portal);
        if i.login(initiator, GW_IQN, &[]).status_class == 0 {
            i.clear_ua();
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "{initiator} not admitted by {portal}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! The initiator map end to end: MDM, SDS and a gateway as separate processes, hosts
//! registered and mapped with scli, and real initiators (libiscsi tools with their
//! own `-i` names, and the test initiator for exact login statuses and unit
//! attentions) checking what each host sees.

mod common;

use common::cluster::{Cluster, GW_IQN};
use common::proc::Proc;
use common::{chap_response, key, keys, require_tool, Initiator};
use dreadnought::iscsi::pdu::Pdu;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const HOST_A: &str = "iqn.1998-01.com.vmware:svrsan2011-4f2a";
const HOST_B: &str = "iqn.1998-01.com.vmware:svrsan2012-77c1";

/// A pool over two SDS with volumes v1, v2, v3 (64 MiB, thin) and a gateway enforcing
/// the initiator map (demo mode off).
fn cluster() -> (Cluster, Proc, SocketAddr) {
    let c = Cluster::with_pool(2, 1 << 30);
    for v in ["v1", "v2", "v3"] {
        c.add_volume(v, "0.0625", &[]);
    }
    let (gw, portal) = c.gateway(false);
    (c, gw, portal)
}

/// iscsi-ls as `initiator`: the text it prints (targets and LUNs it can see).
fn iscsi_ls(portal: SocketAddr, initiator: &str) -> String {
    let out = Command::new("iscsi-ls")
        .args(["-i", initiator, "-s", &format!("iscsi://{portal}")])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn luns_seen(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Lun:"))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

/// Logs in as `initiator` (no CHAP) and returns (status class, detail).
fn login_status(portal: SocketAddr, initiator: &str) -> (u8, u8) {
    let mut i = Initiator::connect(portal);
    let r = i.login_step(
        0,
        1,
        true,
        &[
            ("InitiatorName", initiator),
            ("TargetName", GW_IQN),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ],
    );
    (r.status_class, r.status_detail)
}

/// Waits until `f` holds (the gateway follows the MDM within about a second).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within 10 s");
}

#[test]
fn each_initiator_sees_exactly_its_luns_and_strangers_see_nothing() {
    require_tool("iscsi-ls");
    let (mut c, gw, portal) = cluster();
    c.add_host("svrsan2011", HOST_A);
    c.add_host("svrsan2012", HOST_B);
    c.map("svrsan2011", "v1", &[]);
    c.map("svrsan2011", "v2", &[]);
    c.map("svrsan2012", "v3", &["--lun", "5"]);
    eventually("host A sees two LUNs", || {
        luns_seen(&iscsi_ls(portal, HOST_A)) == ["0", "1"]
    });
    assert_eq!(luns_seen(&iscsi_ls(portal, HOST_B)), ["5"]);
    // A stranger is shown no target and refused at login (0x0202).
    let stranger = "iqn.2026-11.io.example:stranger";
    let seen = iscsi_ls(portal, stranger);
    assert!(!seen.contains(GW_IQN), "{seen}");
    assert_eq!(login_status(portal, stranger), (2, 2));
    // Names compare case-insensitively, as RFC 3722 folds them.
    assert_eq!(
        login_status(portal, &HOST_A.to_uppercase().replace("IQN.", "iqn.")).0,
        0
    );

    // The four ScaleIO commands, then the query shows the hosts with their LUNs.
    let hosts = ["svrsan2013", "svrsan2014"];
    for (i, h) in hosts.iter().enumerate() {
        c.add_host(h, &format!("iqn.1998-01.com.vmware:{h}-{i}"));
    }
    for h in ["svrsan2011", "svrsan2012", "svrsan2013", "svrsan2014"] {
        c.ok(&[
            "--map_volume_to_scsi_initiator",
            "--volume_name",
            if h == "svrsan2011" { "v3" } else { "v1" },
            "--initiator_name",
            h,
        ]);
    }
    let all = c.ok(&["--query_all_scsi_initiators"]);
    for h in ["svrsan2011", "svrsan2012", "svrsan2013", "svrsan2014"] {
        assert!(all.contains(h), "{all}");
    }
    assert!(all.contains("LUN 2") && all.contains("v3"), "{all}");

    // It all persists: kill -9 of the MDM, then a new gateway process.
    let before = c.ok(&["--export_initiator_map"]);
    c.kill9_mdm();
    c.restart_mdm();
    assert_eq!(c.ok(&["--export_initiator_map"]), before);
    assert_eq!(c.ok(&["--query_all_scsi_initiators"]), all);
    gw.kill9();
    let (_gw, portal) = c.gateway(false);
    assert_eq!(luns_seen(&iscsi_ls(portal, HOST_A)), ["0", "1", "2"]);
    assert_eq!(login_status(portal, stranger), (2, 2));
}

#[test]
fn per_initiator_chap_one_way_and_mutual() {
    require_tool("iscsi-inq");
    let (c, _gw, portal) = cluster();
    c.add_host("svrsan2011", HOST_A);
    c.map("svrsan2011", "v1", &[]);
    c.ok(&[
        "--set_scsi_initiator_chap",
        "--initiator_name",
        "svrsan2011",
        "--chap_username",
        "hostA",
        "--chap_secret",
        "hostAsecret12",
    ]);
    let inq_with = |auth: &str, args: &str| {
        Command::new("iscsi-inq")
            .args(["-i", HOST_A])
            .arg(format!("iscsi://{auth}{portal}/{GW_IQN}/0{args}"))
            .output()
            .unwrap()
    };
    let inq = |auth: &str| inq_with(auth, "");
    eventually("CHAP is required", || {
        let mut i = Initiator::connect(portal);
        i.login_chap(HOST_A, GW_IQN, "hostA", "wrongsecret99", false)
            .status_class
            == 2
    });
    assert!(
        inq("hostA%hostAsecret12@").status.success(),
        "right secret refused"
    );
    assert!(
        !inq("hostA%wrongsecret99@").status.success(),
        "wrong secret accepted"
    );
    assert!(!inq("").status.success(), "no secret accepted");
    let mut i = Initiator::connect(portal);
    let r = i.login_chap(HOST_A, GW_IQN, "hostA", "wrongsecret99", false);
    assert_eq!((r.status_class, r.status_detail), (2, 1));

    // Mutual: the target proves itself with the initiator's mutual secret.
    c.ok(&[
        "--set_scsi_initiator_chap",
        "--initiator_name",
        "svrsan2011",
        "--chap_username",
        "hostA",
        "--chap_secret",
        "hostAsecret12",
        "--mutual_chap_username",
        "gateway",
        "--mutual_chap_secret",
        "gatewaysecret3",
    ]);
    eventually("mutual CHAP answered", || {
        let mut i = Initiator::connect(portal);
        let r = i.login_chap(HOST_A, GW_IQN, "hostA", "hostAsecret12", true);
        let kv = keys(&r.data);
        r.status_class == 0
            && key(&kv, "CHAP_N") == Some("gateway")
            && key(&kv, "CHAP_R").map(|s| s.to_ascii_lowercase())
                == Some(chap_response(77, "gatewaysecret3", &[9u8; 16]))
    });
    // libiscsi checks the target's proof too.
    let auth = "hostA%hostAsecret12@";
    let ok = inq_with(auth, "?target_user=gateway&target_password=gatewaysecret3");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = inq_with(auth, "?target_user=gateway&target_password=notthetarget9");
    assert!(
        !bad.status.success(),
        "libiscsi accepted a target with the wrong secret"
    );

    // Queries never show the secrets.
    let q = c.ok(&["--query_all_scsi_initiators", "--json"]);
    assert!(
        !q.contains("hostAsecret12") && !q.contains("gatewaysecret3"),
        "{q}"
    );
}

/// A session as `initiator` once the gateway admits it and serves its LUN 0, past
/// its unit attentions. The host and its mapping are two MDM changes: the gateway
/// may admit the host a moment before the LUN appears in its session.
fn logged_in(portal: SocketAddr, initiator: &str) -> Initiator {
    eventually("the initiator may log in", || {
        login_status(portal, initiator).0 == 0
    });
    let mut i = Initiator::connect(portal);
    assert_eq!(i.login(initiator, GW_IQN, &[]).status_class, 0);
    eventually("LUN 0 is served", || {
        let r = i.scsi(&[0u8; 6], 0, None, 0);
        r.status == 0 || r.sense.get(2).is_some_and(|k| k & 0x0F == 6)
    });
    i.clear_ua();
    i
}

fn sense_asc(r: &common::ScsiResult) -> (u8, u8, u8) {
    (r.sense[2] & 0x0F, r.sense[12], r.sense[13])
}

#[test]
fn map_changes_reach_a_logged_in_initiator_at_once() {
    let (c, _gw, portal) = cluster();
    c.add_host("svrsan2011", HOST_A);
    c.map("svrsan2011", "v1", &[]);
    let mut i = logged_in(portal, HOST_A);

    // Mapping while logged in: REPORTED LUNS DATA HAS CHANGED, then the LUN works.
    c.map("svrsan2011", "v2", &[]);
    let tur = [0u8; 6];
    eventually("the unit attention", || {
        let r = i.scsi(&tur, 0, None, 0);
        r.status == 2 && sense_asc(&r) == (6, 0x3F, 0x0E)
    });
    let report = i.scsi(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256, None, 0);
    assert_eq!(report.status, 0);
    assert_eq!(
        u32::from_be_bytes(report.data[..4].try_into().unwrap()),
        16,
        "two LUNs"
    );
    i.lun = 1;
    i.clear_ua();
    let w = vec![0x5Au8; 512];
    let write10 = [0x2A, 0, 0, 0, 0, 9, 0, 0, 1, 0];
    assert_eq!(i.scsi(&write10, 512, Some(&w), 512).status, 0);
    let read = i.scsi(&[0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0], 512, None, 0);
    assert_eq!((read.status, read.data), (0, w));

    // Unmapping: the very next command to that LUN is refused.
    c.ok(&[
        "--unmap_volume_from_scsi_initiator",
        "--volume_name",
        "v2",
        "--initiator_name",
        "svrsan2011",
    ]);
    eventually("LOGICAL UNIT NOT SUPPORTED", || {
        let r = i.scsi(&tur, 0, None, 0);
        r.status == 2 && sense_asc(&r) == (5, 0x25, 0)
    });

    // Removing the initiator: the target asks it to log out (Async Message, event 1).
    c.ok(&["--remove_scsi_initiator", "--initiator_name", "svrsan2011"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no logout request");
        match i.recv() {
            Some(Pdu::AsyncMessage(m)) => {
                assert_eq!(m.event, 1);
                break;
            }
            Some(Pdu::NopIn(n)) => i.answer_ping(&n),
            Some(_) => {}
            None => panic!("connection dropped without a logout request"),
        }
    }
    assert_eq!(login_status(portal, HOST_A), (2, 2));
}

#[test]
fn a_read_only_mapping_refuses_writes_and_passes_the_readonly_suite() {
    require_tool("iscsi-test-cu");
    let (c, _gw, portal) = cluster();
    c.add_host("svrsan2011", HOST_A);
    c.map("svrsan2011", "v1", &["--access_mode", "ReadOnly"]);
    let mut i = logged_in(portal, HOST_A);
    let w = vec![1u8; 512];
    let r = i.scsi(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512, Some(&w), 512);
    assert_eq!((r.status, sense_asc(&r)), (2, (7, 0x27, 0)));
    // MODE SENSE(6) shows the WP bit.
    let ms = i.scsi(&[0x1A, 0, 0x3F, 0, 255, 0], 255, None, 0);
    assert_eq!(ms.data[2] & 0x80, 0x80);
    drop(i);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("iscsi-test-cu")
        .current_dir(dir.path())
        .args(["-d", "-i", HOST_A, "-t", "ALL.ReadOnly"])
        .arg(format!("iscsi://{portal}/{GW_IQN}/0"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tests") && !text.contains("FAILED") && out.status.success(),
        "{text}"
    );
}

#[test]
fn a_broken_initiators_toml_edit_changes_nothing_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let map_file = dir.path().join("initiators.toml");
    let good = format!(
        "[[initiator]]\nname = \"svrsan2011\"\niqn = \"{HOST_A}\"\n\n[[initiator.mapping]]\nvolume = \"demo0\"\nlun = 0\n"
    );
    std::fs::write(&map_file, &good).unwrap();
    let (up, portal) = common::cluster::up(dir.path(), 2, false);
    let mdm = up.field("cluster ready", "mdm");
    assert_eq!(
        login_status(portal, HOST_A).0,
        0,
        "the file's host may log in"
    );
    let export = || {
        let o = Command::new(env!("CARGO_BIN_EXE_scli"))
            .args(["--mdm_ip", &mdm, "--export_initiator_map"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let before = export();
    assert!(before.contains("svrsan2011"), "{before}");

    // Line 7 names a LUN out of range: refused, the log names file and line.
    std::fs::write(&map_file, good.replace("lun = 0", "lun = 99999")).unwrap();
    up.wait_for("initiators.toml:7:", Duration::from_secs(10));
    assert_eq!(export(), before);
    assert_eq!(login_status(portal, HOST_A).0, 0);

    // A volume that does not exist: refused with its line too.
    std::fs::write(&map_file, good.replace("demo0", "nosuchvolume")).unwrap();
    up.wait_for("initiators.toml:6:", Duration::from_secs(10));
    assert_eq!(export(), before);

    // A good edit applies live: host A is gone, host B is in.
    std::fs::write(&map_file, good.replace(HOST_A, HOST_B)).unwrap();
    eventually("host B admitted", || login_status(portal, HOST_B).0 == 0);
    assert_eq!(login_status(portal, HOST_A), (2, 2));
}

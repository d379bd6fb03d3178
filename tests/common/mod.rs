//! Test harness: a real `dreadnought up` process on a free port and a small blocking
//! iSCSI initiator built on the crate's own PDU codec, so tests can send exactly the
//! PDUs (good or malformed) they mean to.
#![allow(dead_code)]

pub mod cluster;
pub mod netns;
pub mod proc;
pub mod writer;

use bytes::{Bytes, BytesMut};
use dreadnought::iscsi::pdu::{self, Digests, LoginRequest, Pdu, RESERVED_TAG};
use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

pub const IQN: &str = "iqn.2026-11.io.dreadnought:test";
pub const INITIATOR: &str = "iqn.2026-11.io.dreadnought:test-initiator";

/// A running `dreadnought up`, killed on drop.
pub struct Up {
    proc: proc::Proc,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Up {
    /// Starts with one 64 MiB volume at LUN 0; `target_extra` goes into the
    /// [[target]] table, `iscsi_extra` into [iscsi].
    pub fn start(target_extra: &str, iscsi_extra: &str) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            r#"data_dir = "{data}"
[iscsi]
listen = ["127.0.0.1:0"]
{iscsi_extra}
[[target]]
name = "{IQN}"
volumes = ["lun0"]
{target_extra}
[[volume]]
name = "lun0"
size = "64MiB"
"#,
            data = dir.path().join("data").display()
        );
        let cfg_path = dir.path().join("dreadnought.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let ready = "ready: iSCSI target listening";
        let proc = proc::Proc::dreadnought_with_log(
            &["up", "--config", cfg_path.to_str().unwrap()],
            ready,
            "debug",
        );
        let addr = proc.addr(ready, "portals");
        Up { proc, addr, dir }
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Waits (up to 5 s) for the log to mention `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self, auth: &str) -> String {
        format!("iscsi://{auth}{}/{IQN}/0", self.addr)
    }
}

/// A minimal blocking initiator.
pub struct Initiator {
    pub stream: TcpStream,
    buf: BytesMut,
    pub digests: Digests,
    pub isid: [u8; 6],
    pub itt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub tsih: u16,
    /// What we told the target we accept per PDU.
    pub max_recv: u32,
    /// The LUN `scsi` addresses.
    pub lun: u64,
}

pub struct ScsiResult {
    pub status: u8,
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
    pub data_in_pdus: usize,
    pub r2ts: usize,
    pub residual: (bool, bool, u32),
}

impl Initiator {
    pub fn connect(addr: SocketAddr) -> Initiator {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Initiator {
            stream,
            buf: BytesMut::new(),
            digests: Digests::default(),
            isid: [0x80, 0, 0, 0x12, 0x34, 0x56],
            itt: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
            tsih: 0,
            max_recv: 262_144,
            lun: 0,
        }
    }

    pub fn send(&mut self, p: &Pdu) {
        let enc = p.encode(self.digests);
        self.stream.write_all(&enc.to_vec()).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next PDU, or `None` when the target closed the connection (or timed out).
    pub fn recv(&mut self) -> Option<Pdu> {
        loop {
            if let Some(n) = pdu::check(&self.buf, self.digests, 1 << 24).unwrap() {
                let frame = self.buf.split_to(n).freeze();
                let p = pdu::parse(frame, self.digests).unwrap();
                return Some(p);
            }
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    pub fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// Sends one Login Request with `keys` and returns the response.
    pub fn login_step(
        &mut self,
        csg: u8,
        nsg: u8,
        transit: bool,
        keys: &[(&str, &str)],
    ) -> pdu::LoginResponse {
        let mut data = Vec::new();
        for (k, v) in keys {
            data.extend_from_slice(format!("{k}={v}\0").as_bytes());
        }
        let req = LoginRequest {
            transit,
            csg,
            nsg,
            isid: self.isid,
            tsih: self.tsih,
            itt: self.itt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: Bytes::from(data),
            ..Default::default()
        };
        self.send(&Pdu::LoginRequest(req));
        match self.recv() {
            Some(Pdu::LoginResponse(r)) => {
                self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                if r.tsih != 0 {
                    self.tsih = r.tsih;
                }
                r
            }
            other => panic!("expected a Login Response, got {other:?}"),
        }
    }

    /// A normal-session login without authentication, straight to full feature phase.
    pub fn login(
        &mut self,
        initiator: &str,
        target: &str,
        extra: &[(&str, &str)],
    ) -> pdu::LoginResponse {
        let mut keys = vec![
            ("InitiatorName", initiator),
            ("TargetName", target),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ];
        let r = self.login_step(0, 1, true, &keys);
        if r.status_class != 0 {
            return r;
        }
        let mrdsl = self.max_recv.to_string();
        keys = vec![
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", mrdsl.as_str()),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
        ];
        for (k, v) in extra {
            match keys.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v,
                None => keys.push((k, v)),
            }
        }
        let r = self.login_step(1, 3, true, &keys);
        assert_eq!(r.status_class, 0, "operational login failed: {r:?}");
        let text = String::from_utf8_lossy(&r.data).to_string();
        if text.contains("HeaderDigest=CRC32C") {
            self.digests.header = true;
        }
        if text.contains("DataDigest=CRC32C") {
            self.digests.data = true;
        }
        r
    }

    /// The security stage with CHAP as `user`/`secret`, asking the target to prove
    /// itself too when `mutual` is set; returns the target's last Login Response (its
    /// status says whether we got in, and CHAP_N/CHAP_R its proof).
    pub fn login_chap(
        &mut self,
        initiator: &str,
        target: &str,
        user: &str,
        secret: &str,
        mutual: bool,
    ) -> pdu::LoginResponse {
        let r = self.login_step(
            0,
            0,
            false,
            &[
                ("InitiatorName", initiator),
                ("TargetName", target),
                ("AuthMethod", "CHAP,None"),
            ],
        );
        // A refusal, or a target that picked None (its initiator map does not ask for
        // CHAP yet): the caller sees the answer, and nothing of CHAP follows.
        if r.status_class != 0 || key(&keys(&r.data), "AuthMethod") != Some("CHAP") {
            return r;
        }
        let r = self.login_step(0, 0, false, &[("CHAP_A", "5")]);
        let kv = keys(&r.data);
        let id: u8 = key(&kv, "CHAP_I").unwrap().parse().unwrap();
        let challenge = unhex(key(&kv, "CHAP_C").unwrap());
        let resp = chap_response(id, secret, &challenge);
        let mc = format!("0x{}", "09".repeat(16));
        let mut answer = vec![("CHAP_N", user), ("CHAP_R", resp.as_str())];
        if mutual {
            answer.push(("CHAP_I", "77"));
            answer.push(("CHAP_C", mc.as_str()));
        }
        self.login_step(0, 1, true, &answer)
    }

    /// Runs one SCSI command to completion, answering R2Ts from `write`.
    pub fn scsi(
        &mut self,
        cdb: &[u8],
        edtl: u32,
        write: Option<&[u8]>,
        immediate: usize,
    ) -> ScsiResult {
        let itt = self.next_itt();
        let wdata = write.unwrap_or(&[]);
        let imm = immediate.min(wdata.len());
        let cmd = pdu::ScsiCommand {
            final_: true,
            read: write.is_none() && edtl > 0,
            write: write.is_some(),
            attr: 1,
            lun: dreadnought::scsi::encode_lun(self.lun),
            itt,
            edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: Bytes::copy_from_slice(cdb),
            data: Bytes::copy_from_slice(&wdata[..imm]),
            ..Default::default()
        };
        self.cmd_sn += 1;
        self.send(&Pdu::ScsiCommand(cmd));
        let mut data = vec![0u8; edtl as usize];
        let mut got = 0;
        let mut data_in_pdus = 0;
        let mut r2ts = 0;
        loop {
            match self.recv().expect("connection closed during a command") {
                Pdu::R2t(r) => {
                    r2ts += 1;
                    let mut off = r.buffer_offset as usize;
                    let end = off + r.desired_length as usize;
                    let mut sn = 0;
                    while off < end {
                        let n = (end - off).min(8192);
                        let d = pdu::DataOut {
                            final_: off + n == end,
                            lun: dreadnought::scsi::encode_lun(self.lun),
                            itt,
                            ttt: r.ttt,
                            exp_stat_sn: self.exp_stat_sn,
                            data_sn: sn,
                            buffer_offset: off as u32,
                            data: Bytes::copy_from_slice(&wdata[off..off + n]),
                        };
                        self.send(&Pdu::DataOut(d));
                        sn += 1;
                        off += n;
                    }
                }
                Pdu::DataIn(d) => {
                    data_in_pdus += 1;
                    let o = d.buffer_offset as usize;
                    data[o..o + d.data.len()].copy_from_slice(&d.data);
                    got = got.max(o + d.data.len());
                    if let Some(status) = d.status {
                        self.exp_stat_sn = d.stat_sn.wrapping_add(1);
                        data.truncate(got);
                        return ScsiResult {
                            status,
                            data,
                            sense: vec![],
                            data_in_pdus,
                            r2ts,
                            residual: (d.overflow, d.underflow, d.residual),
                        };
                    }
                }
                Pdu::ScsiResponse(r) => {
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    data.truncate(got);
                    let sense = if r.data.len() > 2 {
                        r.data[2..].to_vec()
                    } else {
                        vec![]
                    };
                    return ScsiResult {
                        status: r.status,
                        data,
                        sense,
                        data_in_pdus,
                        r2ts,
                        residual: (r.overflow, r.underflow, r.residual),
                    };
                }
                Pdu::NopIn(n) if n.itt == RESERVED_TAG => self.answer_ping(&n),
                other => panic!("unexpected PDU during a command: {other:?}"),
            }
        }
    }

    /// Clears the power-on unit attention a new nexus sees first.
    /// Sends a task management function (immediate, LUN 0 or `self.lun`) and returns
    /// the target's response code.
    pub fn tmf(&mut self, function: u8, rtt: u32) -> u8 {
        let itt = self.next_itt();
        self.send(&Pdu::TaskMgmtRequest(pdu::TaskMgmtRequest {
            immediate: true,
            function: 0x80 | function,
            lun: dreadnought::scsi::encode_lun(self.lun),
            itt,
            rtt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn: self.cmd_sn,
            ..Default::default()
        }));
        match self.recv() {
            Some(Pdu::TaskMgmtResponse(r)) => {
                assert_eq!(r.itt, itt);
                r.response
            }
            other => panic!("expected a TMF response, got {other:?}"),
        }
    }

    /// Consumes pending unit attentions until TEST UNIT READY answers GOOD. A fresh
    /// session may owe several (power on, then a LUN inventory or capacity change
    /// the gateway applied while it logged in); anything but a unit attention fails.
    pub fn clear_ua(&mut self) {
        let mut seen = Vec::new();
        for _ in 0..16 {
            let r = self.scsi(&[0u8; 6], 0, None, 0);
            if r.status == 0 {
                return;
            }
            let (key, asc, ascq) = match r.sense.first().map(|b| b & 0x7F) {
                Some(0x72 | 0x73) => (r.sense[1] & 0x0F, r.sense[2], r.sense[3]),
                _ => (r.sense[2] & 0x0F, r.sense[12], r.sense[13]),
            };
            assert_eq!(
                key, 6,
                "TEST UNIT READY failed with {key:x}/{asc:02x}/{ascq:02x}, not a unit attention"
            );
            seen.push(format!("{asc:02x}/{ascq:02x}"));
        }
        panic!("TEST UNIT READY never returned GOOD; unit attentions: {seen:?}");
    }

    pub fn answer_ping(&mut self, n: &pdu::NopIn) {
        let out = pdu::NopOut {
            immediate: true,
            lun: n.lun,
            itt: RESERVED_TAG,
            ttt: n.ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: Bytes::new(),
        };
        self.send(&Pdu::NopOut(out));
    }
}

pub fn keys(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let s = String::from_utf8_lossy(kv);
            let (k, v) = s.split_once('=').unwrap_or((&s, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

pub fn key<'a>(kv: &'a [(String, String)], k: &str) -> Option<&'a str> {
    kv.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

/// Whether a libiscsi command-line tool is installed (scripts/install-deps.sh adds them).
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run scripts/install-deps.sh"
    );
}

/// The CHAP response (RFC 1994 MD5) as a hex key value.
pub fn chap_response(id: u8, secret: &str, challenge: &[u8]) -> String {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret.as_bytes());
    h.update(challenge);
    let d = h.finalize();
    format!(
        "0x{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

pub fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim_start_matches("0x").trim_start_matches("0X");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

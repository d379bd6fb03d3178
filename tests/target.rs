//! The real `dreadnought up` process, driven over TCP by the test initiator in
//! `common` and by libiscsi's command-line tools.

mod common;

use bytes::Bytes;
use common::{chap_response, key, keys, require_tool, unhex, Initiator, Up, INITIATOR, IQN};
use dreadnought::iscsi::pdu::{self, Pdu, RESERVED_TAG};
use std::process::Command;

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

#[test]
fn discovery_lists_the_target_with_its_portal() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    let r = i.login_step(
        0,
        3,
        true,
        &[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ],
    );
    assert_eq!((r.status_class, r.status_detail), (0, 0), "{r:?}");
    assert_ne!(r.tsih, 0);
    let itt = i.next_itt();
    i.send(&Pdu::TextRequest(pdu::TextRequest {
        immediate: true,
        final_: true,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        data: Bytes::from_static(b"SendTargets=All\0"),
        ..Default::default()
    }));
    let Some(Pdu::TextResponse(t)) = i.recv() else {
        panic!("no Text Response")
    };
    let kv = keys(&t.data);
    assert_eq!(key(&kv, "TargetName"), Some(IQN));
    assert_eq!(
        key(&kv, "TargetAddress"),
        Some(format!("{},1", up.addr).as_str())
    );
}

#[test]
fn unknown_target_is_refused_with_not_found() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    let r = i.login(
        "iqn.2026-11.io.x:someone",
        "iqn.2026-11.io.dreadnought:nope",
        &[],
    );
    assert_eq!((r.status_class, r.status_detail), (2, 3));
}

#[test]
fn initiator_outside_the_allow_list_gets_authorization_failure() {
    let up = Up::start(
        "demo_mode = false\nallowed_initiators = [\"iqn.2026-11.io.x:allowed\"]",
        "",
    );
    let mut i = Initiator::connect(up.addr);
    let r = i.login("iqn.2026-11.io.x:stranger", IQN, &[]);
    assert_eq!((r.status_class, r.status_detail), (2, 2));
    let mut ok = Initiator::connect(up.addr);
    let r = ok.login("iqn.2026-11.io.x:allowed", IQN, &[]);
    assert_eq!(r.status_class, 0);
}

#[test]
fn large_write_uses_r2ts_and_reads_back_split_by_mrdsl() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    i.max_recv = 4096;
    i.login(INITIATOR, IQN, &[]);
    i.clear_ua();
    let data: Vec<u8> = (0..1024 * 1024).map(|n| (n * 7 % 251) as u8).collect();
    let w = i.scsi(&write10(100, 2048), data.len() as u32, Some(&data), 8192);
    assert_eq!(w.status, 0);
    // 8 KiB immediate + 56 KiB unsolicited is not sent by this initiator, so the
    // rest comes in MaxBurstLength (256 KiB) R2T sequences.
    assert!(w.r2ts >= 4, "expected R2T sequences, got {}", w.r2ts);
    let r = i.scsi(&read10(100, 2048), data.len() as u32, None, 0);
    assert_eq!(r.status, 0);
    assert_eq!(
        r.data_in_pdus,
        1024 * 1024 / 4096,
        "Data-In split by our MRDSL"
    );
    assert!(r.data == data, "read back differs");
}

#[test]
fn residuals_are_exact() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    i.login(INITIATOR, IQN, &[]);
    i.clear_ua();
    // INQUIRY with a 255-byte allocation length and a 255-byte buffer: underflow.
    let r = i.scsi(&[0x12, 0, 0, 0, 255, 0], 255, None, 0);
    assert_eq!(r.status, 0);
    let (over, under, n) = r.residual;
    assert!(under && !over);
    assert_eq!(n as usize, 255 - r.data.len());
    // READ of 2 blocks into a 1-block buffer: overflow by 512.
    let r = i.scsi(&read10(0, 2), 512, None, 0);
    assert_eq!(r.residual, (true, false, 512));
    assert_eq!(r.data.len(), 512);
}

#[test]
fn unknown_opcode_is_rejected_and_the_connection_survives() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    i.login(INITIATOR, IQN, &[]);
    let mut bogus = [0u8; 48];
    bogus[0] = 0x1c; // not an iSCSI opcode
    bogus[16..20].copy_from_slice(&77u32.to_be_bytes());
    i.send_raw(&bogus);
    match i.recv() {
        Some(Pdu::Reject(r)) => {
            assert_eq!(r.reason, pdu::reject_reason::COMMAND_NOT_SUPPORTED);
            assert_eq!(&r.data[..], &bogus[..]);
        }
        other => panic!("expected a Reject, got {other:?}"),
    }
    i.clear_ua();
}

#[test]
fn corrupt_header_digest_drops_the_connection() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    i.login(INITIATOR, IQN, &[("HeaderDigest", "CRC32C")]);
    assert!(
        i.digests.header,
        "target should accept CRC32C header digests"
    );
    let nop = Pdu::NopOut(pdu::NopOut {
        immediate: true,
        itt: 5,
        ttt: RESERVED_TAG,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        ..Default::default()
    });
    let mut bytes = nop.encode(i.digests).to_vec();
    bytes[49] ^= 0xff; // inside the CRC
    i.send_raw(&bytes);
    assert!(i.recv().is_none(), "connection should be dropped");
}

#[test]
fn oversized_data_segment_is_refused() {
    let up = Up::start("demo_mode = true", "max_recv_data_segment_length = 8192");
    let mut i = Initiator::connect(up.addr);
    i.login(INITIATOR, IQN, &[]);
    let nop = Pdu::NopOut(pdu::NopOut {
        immediate: true,
        itt: 5,
        ttt: RESERVED_TAG,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        data: Bytes::from(vec![0u8; 16384]),
        ..Default::default()
    });
    i.send(&nop);
    loop {
        match i.recv() {
            None => break,
            Some(Pdu::Reject(r)) => assert_eq!(r.reason, pdu::reject_reason::PROTOCOL_ERROR),
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn cmdsn_outside_the_window_is_ignored() {
    let up = Up::start("demo_mode = true", "queue_depth = 4");
    let mut i = Initiator::connect(up.addr);
    i.login(INITIATOR, IQN, &[]);
    i.clear_ua();
    let good = i.cmd_sn;
    i.cmd_sn = good + 10;
    let itt = i.next_itt();
    i.send(&Pdu::ScsiCommand(pdu::ScsiCommand {
        final_: true,
        itt,
        cmd_sn: i.cmd_sn,
        cdb: Bytes::from_static(&[0u8; 16]),
        ..Default::default()
    }));
    i.cmd_sn = good;
    // The next in-window command is answered; the ignored one never is.
    let r = i.scsi(&[0u8; 6], 0, None, 0);
    assert_eq!(r.status, 0);
}

#[test]
fn nop_out_is_echoed_and_idle_initiators_are_pinged_then_dropped() {
    let up = Up::start(
        "demo_mode = true",
        "nop_interval_secs = 1\nnop_timeout_secs = 1",
    );
    let mut i = Initiator::connect(up.addr);
    i.login(INITIATOR, IQN, &[]);
    i.send(&Pdu::NopOut(pdu::NopOut {
        immediate: true,
        itt: 42,
        ttt: RESERVED_TAG,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        data: Bytes::from_static(b"ping!"),
        ..Default::default()
    }));
    match i.recv() {
        Some(Pdu::NopIn(n)) => {
            assert_eq!(n.itt, 42);
            assert_eq!(&n.data[..], b"ping!");
        }
        other => panic!("expected NOP-In, got {other:?}"),
    }
    // Idle: the target pings; answering keeps the connection.
    let Some(Pdu::NopIn(ping)) = i.recv() else {
        panic!("no ping")
    };
    assert_eq!(ping.itt, RESERVED_TAG);
    assert_ne!(ping.ttt, RESERVED_TAG);
    i.answer_ping(&ping);
    let Some(Pdu::NopIn(ping2)) = i.recv() else {
        panic!("no second ping")
    };
    assert_ne!(ping2.ttt, RESERVED_TAG);
    // Not answering: the connection is dropped.
    assert!(i.recv().is_none());
    assert!(
        up.log_contains("did not answer a NOP-In ping"),
        "{}",
        up.log()
    );
}

#[test]
fn same_isid_reinstates_the_session() {
    let up = Up::start("demo_mode = true", "");
    let mut a = Initiator::connect(up.addr);
    a.login(INITIATOR, IQN, &[]);
    let mut b = Initiator::connect(up.addr);
    let r = b.login(INITIATOR, IQN, &[]);
    assert_eq!(r.status_class, 0);
    assert!(a.recv().is_none(), "old session must be closed");
    b.clear_ua();
}

#[test]
fn abort_of_a_finished_task_and_lun_reset() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    i.login(INITIATOR, IQN, &[]);
    i.clear_ua();
    assert_eq!(
        i.tmf(pdu::tmf::ABORT_TASK, 0x1234),
        pdu::tmf_response::TASK_DOES_NOT_EXIST
    );
    assert_eq!(
        i.tmf(pdu::tmf::LOGICAL_UNIT_RESET, RESERVED_TAG),
        pdu::tmf_response::COMPLETE
    );
    // The reset shows as a unit attention: sense key 6, ASC 0x29.
    let r = i.scsi(&[0u8; 6], 0, None, 0);
    assert_eq!(r.status, 2);
    let (key, asc) = if r.sense[0] & 0x7f >= 0x72 {
        (r.sense[1] & 0xf, r.sense[2])
    } else {
        (r.sense[2] & 0xf, r.sense[12])
    };
    assert_eq!((key, asc), (6, 0x29));
}

#[test]
fn logout_closes_the_session() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    i.login(INITIATOR, IQN, &[]);
    let itt = i.next_itt();
    i.send(&Pdu::LogoutRequest(pdu::LogoutRequest {
        immediate: true,
        reason: 0,
        itt,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        ..Default::default()
    }));
    match i.recv() {
        Some(Pdu::LogoutResponse(r)) => {
            assert_eq!((r.itt, r.response), (itt, 0));
        }
        other => panic!("expected Logout Response, got {other:?}"),
    }
    assert!(i.recv().is_none());
}

const CHAP: &str = r#"chap = { username = "alice", secret = "alicesecret1", mutual_username = "tgt", mutual_secret = "targetsecret2" }"#;

#[test]
fn chap_with_libiscsi_accepts_the_right_secret_and_refuses_a_wrong_one() {
    require_tool("iscsi-inq");
    let up = Up::start(&format!("demo_mode = true\n{CHAP}"), "");
    let run = |auth: &str| {
        Command::new("iscsi-inq")
            .arg(up.url(auth))
            .output()
            .expect("run iscsi-inq")
    };
    let ok = run("alice%alicesecret1@");
    assert!(
        ok.status.success(),
        "right secret refused: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("Peripheral"));
    let bad = run("alice%wrongsecret9@");
    assert!(!bad.status.success(), "wrong secret accepted");
    let none = run("");
    assert!(!none.status.success(), "no secret accepted");
}

#[test]
fn mutual_chap_authenticates_both_sides() {
    let up = Up::start(&format!("demo_mode = true\n{CHAP}"), "");
    let login = |secret: &str| {
        let mut i = Initiator::connect(up.addr);
        let r = i.login_step(
            0,
            0,
            false,
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", IQN),
                ("AuthMethod", "CHAP,None"),
            ],
        );
        assert_eq!(key(&keys(&r.data), "AuthMethod"), Some("CHAP"));
        let r = i.login_step(0, 0, false, &[("CHAP_A", "5")]);
        let kv = keys(&r.data);
        let id: u8 = key(&kv, "CHAP_I").unwrap().parse().unwrap();
        let challenge = unhex(key(&kv, "CHAP_C").unwrap());
        let my_challenge = [9u8; 16];
        let resp = chap_response(id, secret, &challenge);
        let mc = format!("0x{}", "09".repeat(16));
        let r = i.login_step(
            0,
            1,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", resp.as_str()),
                ("CHAP_I", "77"),
                ("CHAP_C", mc.as_str()),
            ],
        );
        (r, my_challenge)
    };
    let (r, mine) = login("alicesecret1");
    assert_eq!(r.status_class, 0, "{r:?}");
    let kv = keys(&r.data);
    assert_eq!(key(&kv, "CHAP_N"), Some("tgt"));
    assert_eq!(
        key(&kv, "CHAP_R").map(|s| s.to_ascii_lowercase()),
        Some(chap_response(77, "targetsecret2", &mine))
    );
    let (r, _) = login("notthesecret");
    assert_eq!((r.status_class, r.status_detail), (2, 1));
}

#[test]
fn iscsi_ls_discovers_and_reports_the_lun() {
    require_tool("iscsi-ls");
    let up = Up::start("demo_mode = true", "");
    let out = Command::new("iscsi-ls")
        .args(["-s", &format!("iscsi://{}", up.addr)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(IQN), "{text}");
    assert!(text.contains("Lun:0"), "{text}");
}

#[test]
fn malformed_login_text_gets_an_initiator_error() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    let req = pdu::LoginRequest {
        transit: true,
        csg: 0,
        nsg: 1,
        isid: i.isid,
        itt: 1,
        data: Bytes::from_static(b"InitiatorName\0garbage-without-equals\0"),
        ..Default::default()
    };
    i.send(&Pdu::LoginRequest(req));
    match i.recv() {
        Some(Pdu::LoginResponse(r)) => assert_eq!(r.status_class, 2, "{r:?}"),
        other => panic!("expected a Login Response, got {other:?}"),
    }
    assert!(i.recv().is_none());
}

#[test]
fn crc32c_digests_protect_io_and_a_corrupt_data_out_fails_only_its_task() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    i.login(
        INITIATOR,
        IQN,
        &[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")],
    );
    assert!(i.digests.header && i.digests.data);
    i.clear_ua();
    let data: Vec<u8> = (0..128 * 1024).map(|n| (n % 253) as u8).collect();
    let w = i.scsi(&write10(8, 256), data.len() as u32, Some(&data), 0);
    assert_eq!(w.status, 0);
    let r = i.scsi(&read10(8, 256), data.len() as u32, None, 0);
    assert!(r.status == 0 && r.data == data);

    // A write whose only Data-Out arrives with a bad data digest.
    let itt = i.next_itt();
    i.send(&Pdu::ScsiCommand(pdu::ScsiCommand {
        final_: true,
        write: true,
        itt,
        edtl: 512,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        cdb: Bytes::copy_from_slice(&write10(0, 1)),
        ..Default::default()
    }));
    i.cmd_sn += 1;
    let Some(Pdu::R2t(r2t)) = i.recv() else {
        panic!("expected an R2T")
    };
    let dout = Pdu::DataOut(pdu::DataOut {
        final_: true,
        itt,
        ttt: r2t.ttt,
        exp_stat_sn: i.exp_stat_sn,
        data: Bytes::from(vec![0xee; 512]),
        ..Default::default()
    });
    let mut bytes = dout.encode(i.digests).to_vec();
    let n = bytes.len();
    bytes[n - 1] ^= 0x55; // the data digest
    i.send_raw(&bytes);
    let mut rejected = false;
    loop {
        match i.recv().expect("connection must survive") {
            Pdu::Reject(r) => {
                assert_eq!(r.reason, pdu::reject_reason::DATA_DIGEST_ERROR);
                rejected = true;
            }
            Pdu::ScsiResponse(r) => {
                assert_eq!(r.itt, itt);
                assert_eq!(r.status, 2);
                // ABORTED COMMAND / PROTOCOL SERVICE CRC ERROR (fixed format).
                assert_eq!(
                    (r.data[2 + 2] & 0xf, r.data[2 + 12], r.data[2 + 13]),
                    (0xb, 0x47, 0x05)
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(rejected);
    let r = i.scsi(&read10(0, 1), 512, None, 0);
    assert_eq!(r.status, 0);
    assert_ne!(r.data, vec![0xee; 512], "the corrupt write must not land");
}

#[test]
fn text_requests_and_answers_continue_across_pdus() {
    let mut extra = String::from("demo_mode = true\n");
    for n in 0..10 {
        extra.push_str(&format!(
            "[[target]]\nname = \"iqn.2026-11.io.dreadnought:extra-target-{n}\"\nvolumes = [\"lun0\"]\ndemo_mode = true\n"
        ));
    }
    let up = Up::start(&extra, "");
    let mut i = Initiator::connect(up.addr);
    let r = i.login_step(
        0,
        1,
        true,
        &[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ],
    );
    assert_eq!(r.status_class, 0);
    let r = i.login_step(1, 3, true, &[("MaxRecvDataSegmentLength", "512")]);
    assert_eq!(r.status_class, 0, "{r:?}");
    let text = |i: &mut Initiator, cont: bool, ttt: u32, data: &'static [u8]| {
        i.send(&Pdu::TextRequest(pdu::TextRequest {
            immediate: true,
            final_: !cont,
            cont,
            itt: 9,
            ttt,
            cmd_sn: i.cmd_sn,
            exp_stat_sn: i.exp_stat_sn,
            data: Bytes::from_static(data),
            ..Default::default()
        }));
        match i.recv() {
            Some(Pdu::TextResponse(t)) => t,
            other => panic!("expected a Text Response, got {other:?}"),
        }
    };
    // The request arrives in two pieces; the first is acknowledged empty.
    let t = text(&mut i, true, RESERVED_TAG, b"SendTar");
    assert!(!t.final_ && t.data.is_empty());
    let mut t = text(&mut i, false, RESERVED_TAG, b"gets=All\0");
    let mut answer = Vec::new();
    let mut pieces = 1;
    while !t.final_ {
        assert!(t.cont && t.data.len() <= 512 && t.ttt != RESERVED_TAG);
        answer.extend_from_slice(&t.data);
        t = text(&mut i, false, t.ttt, b"");
        pieces += 1;
    }
    answer.extend_from_slice(&t.data);
    assert!(pieces >= 2, "a long answer must be split");
    let kv = keys(&answer);
    assert_eq!(kv.iter().filter(|(k, _)| k == "TargetName").count(), 11);
}

#[test]
fn a_write_beyond_the_maximum_transfer_length_is_refused_without_gathering_it() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    i.login(INITIATOR, IQN, &[]);
    i.clear_ua();
    let itt = i.next_itt();
    i.send(&Pdu::ScsiCommand(pdu::ScsiCommand {
        final_: true,
        write: true,
        itt,
        edtl: 64 << 20,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        cdb: Bytes::copy_from_slice(&write10(0, 0xffff)),
        ..Default::default()
    }));
    i.cmd_sn += 1;
    match i.recv() {
        Some(Pdu::ScsiResponse(r)) => {
            assert_eq!((r.itt, r.status), (itt, 2));
            assert_eq!((r.data[2 + 2] & 0xf, r.data[2 + 12]), (5, 0x24));
        }
        other => panic!("expected CHECK CONDITION without any R2T, got {other:?}"),
    }
    i.clear_ua();
}

#[test]
fn an_itt_can_be_reused_as_soon_as_its_response_arrives() {
    let up = Up::start("demo_mode = true", "");
    let mut i = Initiator::connect(up.addr);
    i.login(INITIATOR, IQN, &[]);
    i.clear_ua();
    // open-iscsi reuses task tags at once; none of these may be refused as in progress.
    for _ in 0..300 {
        i.itt = 6; // scsi() uses itt + 1 = 7 every time
        let r = i.scsi(&read10(0, 8), 4096, None, 0);
        assert_eq!(r.status, 0);
    }
}

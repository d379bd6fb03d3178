//! Codec tests: round trips for every PDU, byte-exact layouts, malformed input.

use super::*;

const ALL_DIGESTS: [Digests; 4] = [
    Digests {
        header: false,
        data: false,
    },
    Digests {
        header: true,
        data: false,
    },
    Digests {
        header: false,
        data: true,
    },
    Digests {
        header: true,
        data: true,
    },
];

const BIG: usize = MAX_DATA_SEGMENT;

fn cdb16(first: u8) -> Bytes {
    let mut v = vec![0u8; 16];
    v[0] = first;
    for (i, b) in v.iter_mut().enumerate().skip(1) {
        *b = i as u8;
    }
    Bytes::from(v)
}

/// One of every PDU, with distinct non-zero values in every field so a misplaced
/// offset shows up, and data segments of awkward lengths so padding is exercised.
fn samples() -> Vec<Pdu> {
    let text = Bytes::from_static(b"HeaderDigest=CRC32C,None\0MaxRecvDataSegmentLength=65536\0");
    vec![
        Pdu::NopOut(NopOut {
            immediate: true,
            lun: 0x0001_0000_0000_0000,
            itt: 0x1111_1111,
            ttt: RESERVED_TAG,
            cmd_sn: 10,
            exp_stat_sn: 20,
            data: Bytes::from_static(b"ping!"),
        }),
        Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_: true,
            read: false,
            write: true,
            attr: 1,
            lun: 0x0002_0000_0000_0000,
            itt: 0x2222_2222,
            edtl: 4096,
            cmd_sn: 0xffff_fffe,
            exp_stat_sn: 7,
            cdb: cdb16(0x2a),
            bidi_read_len: None,
            data: Bytes::from(vec![0xab; 513]),
        }),
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: tmf::ABORT_TASK,
            lun: 3 << 48,
            itt: 0x3333_3333,
            rtt: 0x2222_2222,
            cmd_sn: 11,
            exp_stat_sn: 21,
            ref_cmd_sn: 9,
            exp_data_sn: 4,
        }),
        Pdu::LoginRequest(LoginRequest {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a],
            tsih: 0x0102,
            itt: 0x4444_4444,
            cid: 0x0304,
            cmd_sn: 12,
            exp_stat_sn: 22,
            data: text.clone(),
        }),
        Pdu::TextRequest(TextRequest {
            immediate: true,
            final_: false,
            cont: true,
            lun: 0,
            itt: 0x5555_5555,
            ttt: 0x0606_0606,
            cmd_sn: 13,
            exp_stat_sn: 23,
            data: Bytes::from_static(b"SendTargets=All\0"),
        }),
        Pdu::DataOut(DataOut {
            final_: true,
            lun: 0x0002_0000_0000_0000,
            itt: 0x2222_2222,
            ttt: 0x0707_0707,
            exp_stat_sn: 24,
            data_sn: 2,
            buffer_offset: 8192,
            data: Bytes::from(vec![0x5a; 1023]),
        }),
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 1,
            itt: 0x6666_6666,
            cid: 0x0809,
            cmd_sn: 14,
            exp_stat_sn: 25,
        }),
        Pdu::SnackRequest(SnackRequest {
            kind: 1,
            lun: 5,
            itt: 0x7777_7777,
            ttt: 0x0a0a_0a0a,
            exp_stat_sn: 26,
            beg_run: 3,
            run_length: 2,
        }),
        Pdu::NopIn(NopIn {
            lun: 0x0001_0000_0000_0000,
            itt: 0x1111_1111,
            ttt: RESERVED_TAG,
            stat_sn: 30,
            exp_cmd_sn: 31,
            max_cmd_sn: 62,
            data: Bytes::from_static(b"ping!"),
        }),
        Pdu::ScsiResponse(ScsiResponse {
            bidi_overflow: true,
            bidi_underflow: false,
            overflow: false,
            underflow: true,
            response: 0,
            status: 2,
            itt: 0x2222_2222,
            snack_tag: 0x0b0b_0b0b,
            stat_sn: 32,
            exp_cmd_sn: 33,
            max_cmd_sn: 64,
            exp_data_sn: 5,
            bidi_residual: 6,
            residual: 512,
            data: Bytes::from_static(&[
                0, 18, 0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0,
            ]),
        }),
        Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: tmf_response::TASK_DOES_NOT_EXIST,
            itt: 0x3333_3333,
            stat_sn: 34,
            exp_cmd_sn: 35,
            max_cmd_sn: 66,
        }),
        Pdu::LoginResponse(LoginResponse {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_active: 0,
            isid: [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a],
            tsih: 0x0102,
            itt: 0x4444_4444,
            stat_sn: 36,
            exp_cmd_sn: 37,
            max_cmd_sn: 68,
            status_class: 0,
            status_detail: 0,
            data: text,
        }),
        Pdu::TextResponse(TextResponse {
            final_: true,
            cont: false,
            lun: 0,
            itt: 0x5555_5555,
            ttt: RESERVED_TAG,
            stat_sn: 38,
            exp_cmd_sn: 39,
            max_cmd_sn: 70,
            data: Bytes::from_static(
                b"TargetName=iqn.2024-01.dev.dreadnought:t0\0TargetAddress=10.0.0.1:3260,1\0",
            ),
        }),
        Pdu::DataIn(DataIn {
            final_: true,
            ack: false,
            overflow: false,
            underflow: true,
            status: Some(0),
            lun: 0x0002_0000_0000_0000,
            itt: 0x2222_2222,
            ttt: RESERVED_TAG,
            stat_sn: 40,
            exp_cmd_sn: 41,
            max_cmd_sn: 72,
            data_sn: 7,
            buffer_offset: 4096,
            residual: 1,
            data: Bytes::from(vec![0xc3; 4095]),
        }),
        Pdu::DataIn(DataIn {
            final_: false,
            ack: true,
            overflow: false,
            underflow: false,
            status: None,
            lun: 0x0002_0000_0000_0000,
            itt: 0x2222_2223,
            ttt: 0x0c0c_0c0c,
            stat_sn: 0,
            exp_cmd_sn: 42,
            max_cmd_sn: 73,
            data_sn: 0,
            buffer_offset: 0,
            residual: 0,
            data: Bytes::from(vec![0x3c; 8192]),
        }),
        Pdu::LogoutResponse(LogoutResponse {
            response: 0,
            itt: 0x6666_6666,
            stat_sn: 43,
            exp_cmd_sn: 44,
            max_cmd_sn: 75,
            time2wait: 2,
            time2retain: 20,
        }),
        Pdu::R2t(R2t {
            lun: 0x0002_0000_0000_0000,
            itt: 0x2222_2222,
            ttt: 0x0d0d_0d0d,
            stat_sn: 45,
            exp_cmd_sn: 46,
            max_cmd_sn: 77,
            r2t_sn: 1,
            buffer_offset: 65536,
            desired_length: 262_144,
        }),
        Pdu::AsyncMessage(AsyncMessage {
            lun: 0x0004_0000_0000_0000,
            stat_sn: 47,
            exp_cmd_sn: 48,
            max_cmd_sn: 79,
            event: 1,
            vcode: 0,
            param1: 0,
            param2: 0x0102,
            param3: 0x0304,
            data: Bytes::from_static(&[0, 0]),
        }),
        Pdu::Reject(Reject {
            reason: reject_reason::DATA_DIGEST_ERROR,
            stat_sn: 49,
            exp_cmd_sn: 50,
            max_cmd_sn: 81,
            data_sn: 0,
            data: Bytes::from(vec![0x05; BHS_LEN]),
        }),
    ]
}

/// Encodes, checks framing (including that every strict prefix is "incomplete" and that
/// trailing bytes of the next PDU are ignored), parses, and compares.
fn roundtrip(pdu: &Pdu, d: Digests) {
    let enc = pdu.encode(d);
    let wire = enc.to_vec();
    let what = format!("{:#04x} with {d:?}", pdu.opcode());
    assert_eq!(wire.len() % 4, 0, "{what}: not 4-byte aligned");
    assert_eq!(enc.header.len() % 4, 0, "{what}: header not aligned");
    assert_eq!(wire[0] & 0x3f, pdu.opcode(), "{what}");
    for n in 0..wire.len() {
        assert_eq!(
            check(&wire[..n], d, BIG),
            Ok(None),
            "{what}: prefix of {n} bytes"
        );
    }
    assert_eq!(check(&wire, d, BIG), Ok(Some(wire.len())), "{what}");
    let mut more = wire.clone();
    more.extend_from_slice(&[0xee; 61]);
    assert_eq!(
        check(&more, d, BIG),
        Ok(Some(wire.len())),
        "{what}: with a following PDU"
    );
    let got = parse(Bytes::from(wire), d).unwrap_or_else(|e| panic!("{what}: {e:?}"));
    assert_eq!(&got, pdu, "{what}");
    assert_eq!(got.opcode(), pdu.opcode());
    assert_eq!(got.itt(), pdu.itt());
}

#[test]
fn every_pdu_round_trips_with_every_digest_combination() {
    let samples = samples();
    let mut ops: Vec<u8> = samples.iter().map(Pdu::opcode).collect();
    ops.sort_unstable();
    ops.dedup();
    assert_eq!(ops.len(), 18, "a PDU type is missing from the samples");
    for pdu in &samples {
        for d in ALL_DIGESTS {
            roundtrip(pdu, d);
        }
    }
}

#[test]
fn round_trip_with_empty_data_segments() {
    for mut pdu in samples() {
        match &mut pdu {
            Pdu::NopOut(p) => p.data = Bytes::new(),
            Pdu::ScsiCommand(p) => p.data = Bytes::new(),
            Pdu::LoginRequest(p) => p.data = Bytes::new(),
            Pdu::TextRequest(p) => p.data = Bytes::new(),
            Pdu::DataOut(p) => p.data = Bytes::new(),
            Pdu::NopIn(p) => p.data = Bytes::new(),
            Pdu::ScsiResponse(p) => p.data = Bytes::new(),
            Pdu::LoginResponse(p) => p.data = Bytes::new(),
            Pdu::TextResponse(p) => p.data = Bytes::new(),
            Pdu::DataIn(p) => p.data = Bytes::new(),
            Pdu::AsyncMessage(p) => p.data = Bytes::new(),
            Pdu::Reject(p) => p.data = Bytes::new(),
            _ => {}
        }
        for d in ALL_DIGESTS {
            let enc = pdu.encode(d);
            // No data: no padding and, per RFC 7143 11.2.4, no data digest either.
            assert!(enc.trailer.is_empty());
            assert_eq!(enc.len(), BHS_LEN + if d.header { 4 } else { 0 });
            roundtrip(&pdu, d);
        }
    }
}

#[test]
fn parse_initiator_refuses_target_opcodes() {
    for pdu in samples() {
        let d = Digests {
            header: true,
            data: true,
        };
        let wire = Bytes::from(pdu.encode(d).to_vec());
        let res = parse_initiator(wire.clone(), d);
        if opcode::is_initiator(pdu.opcode()) {
            assert_eq!(res, Ok(pdu));
        } else {
            assert_eq!(
                res,
                Err(PduError::UnknownOpcode {
                    opcode: pdu.opcode(),
                    header: wire.slice(..BHS_LEN)
                })
            );
        }
    }
}

#[test]
fn padding_and_data_digest_layout() {
    for len in 0..=9usize {
        let data = Bytes::from((0..len as u8).collect::<Vec<_>>());
        let pdu = Pdu::NopOut(NopOut {
            itt: 1,
            ttt: RESERVED_TAG,
            data: data.clone(),
            ..Default::default()
        });
        let plain = pdu.encode(Digests::default());
        let pad = (4 - len % 4) % 4;
        assert_eq!(pad_len(len), pad);
        assert_eq!(&plain.trailer[..], &vec![0u8; pad][..], "len {len}");
        // DataSegmentLength is the unpadded length.
        assert_eq!(&plain.header[5..8], &[0, 0, len as u8]);
        // The data segment is handed over, not copied.
        assert_eq!(plain.data.as_ptr(), data.as_ptr());
        let dd = pdu.encode(Digests {
            header: false,
            data: true,
        });
        if len == 0 {
            assert!(dd.trailer.is_empty());
        } else {
            let mut padded = data.to_vec();
            padded.resize(len + pad, 0);
            let crc = crc32c::crc32c(&padded).to_le_bytes();
            assert_eq!(&dd.trailer[..pad], &vec![0u8; pad][..]);
            assert_eq!(&dd.trailer[pad..], &crc);
        }
    }
}

#[test]
fn login_response_bytes() {
    let pdu = Pdu::LoginResponse(LoginResponse {
        transit: true,
        cont: false,
        csg: 1,
        nsg: 3,
        version_max: 0,
        version_active: 0,
        isid: [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a],
        tsih: 0x0102,
        itt: 0x1122_3344,
        stat_sn: 0x0102_0304,
        exp_cmd_sn: 0x0a0b_0c0d,
        max_cmd_sn: 0x0a0b_0c1d,
        status_class: 2,
        status_detail: 1,
        data: Bytes::from_static(b"TargetPortalGroupTag=1\0"),
    });
    #[rustfmt::skip]
    let expected: [u8; 48] = [
        0x23, 0x87, 0x00, 0x00, // opcode, T|CSG=1|NSG=3, version-max, version-active
        0x00, 0x00, 0x00, 0x17, // TotalAHSLength, DataSegmentLength 23
        0x80, 0x12, 0x34, 0x56, 0x78, 0x9a, 0x01, 0x02, // ISID, TSIH
        0x11, 0x22, 0x33, 0x44, // ITT
        0x00, 0x00, 0x00, 0x00, // reserved
        0x01, 0x02, 0x03, 0x04, // StatSN
        0x0a, 0x0b, 0x0c, 0x0d, // ExpCmdSN
        0x0a, 0x0b, 0x0c, 0x1d, // MaxCmdSN
        0x02, 0x01, 0x00, 0x00, // Status-Class, Status-Detail, reserved
        0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let enc = pdu.encode(Digests::default());
    assert_eq!(&enc.header[..], &expected[..]);
    assert_eq!(&enc.trailer[..], &[0]);
    assert_eq!(
        parse(Bytes::from(enc.to_vec()), Digests::default()),
        Ok(pdu)
    );
}

#[test]
fn scsi_response_bytes() {
    let sense = Bytes::from_static(&[0x00, 0x02, 0x70, 0x00]);
    let pdu = Pdu::ScsiResponse(ScsiResponse {
        bidi_overflow: false,
        bidi_underflow: true,
        overflow: false,
        underflow: true,
        response: 0x00,
        status: 0x02,
        itt: 0xdead_beef,
        snack_tag: 0,
        stat_sn: 0x100,
        exp_cmd_sn: 0x200,
        max_cmd_sn: 0x21f,
        exp_data_sn: 3,
        bidi_residual: 0x11,
        residual: 0x200,
        data: sense,
    });
    #[rustfmt::skip]
    let expected: [u8; 48] = [
        0x21, 0x8a, 0x00, 0x02, // opcode, 1|u|U, Response, Status
        0x00, 0x00, 0x00, 0x04, // DataSegmentLength 4
        0, 0, 0, 0, 0, 0, 0, 0, // reserved
        0xde, 0xad, 0xbe, 0xef, // ITT
        0x00, 0x00, 0x00, 0x00, // SNACK Tag
        0x00, 0x00, 0x01, 0x00, // StatSN
        0x00, 0x00, 0x02, 0x00, // ExpCmdSN
        0x00, 0x00, 0x02, 0x1f, // MaxCmdSN
        0x00, 0x00, 0x00, 0x03, // ExpDataSN
        0x00, 0x00, 0x00, 0x11, // Bidirectional Read Residual Count
        0x00, 0x00, 0x02, 0x00, // Residual Count
    ];
    let enc = pdu.encode(Digests::default());
    assert_eq!(&enc.header[..], &expected[..]);
    assert!(enc.trailer.is_empty());
}

#[test]
fn data_in_r2t_and_logout_response_offsets() {
    let enc = Pdu::DataIn(DataIn {
        final_: true,
        overflow: true,
        status: Some(0x02),
        itt: 1,
        ttt: RESERVED_TAG,
        stat_sn: 0x0102_0304,
        data_sn: 0x0506_0708,
        buffer_offset: 0x090a_0b0c,
        residual: 0x0d0e_0f10,
        data: Bytes::from_static(b"x"),
        ..Default::default()
    })
    .encode(Digests::default());
    assert_eq!(&enc.header[..4], &[0x25, 0x85, 0x00, 0x02]);
    assert_eq!(&enc.header[24..28], &[1, 2, 3, 4]);
    assert_eq!(
        &enc.header[36..48],
        &[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    );

    // Without status, S, Status and StatSN stay zero whatever stat_sn holds.
    let enc = Pdu::DataIn(DataIn {
        final_: true,
        stat_sn: 99,
        ..Default::default()
    })
    .encode(Digests::default());
    assert_eq!(&enc.header[..4], &[0x25, 0x80, 0, 0]);
    assert_eq!(&enc.header[24..28], &[0, 0, 0, 0]);

    let enc = Pdu::R2t(R2t {
        itt: 0x0a0b_0c0d,
        ttt: 0x1a1b_1c1d,
        r2t_sn: 0x0203_0405,
        buffer_offset: 0x0607_0809,
        desired_length: 0x0001_0000,
        ..Default::default()
    })
    .encode(Digests::default());
    assert_eq!(&enc.header[..8], &[0x31, 0x80, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        &enc.header[16..24],
        &[0x0a, 0x0b, 0x0c, 0x0d, 0x1a, 0x1b, 0x1c, 0x1d]
    );
    assert_eq!(&enc.header[36..48], &[2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 0, 0]);

    let enc = Pdu::LogoutResponse(LogoutResponse {
        response: 2,
        itt: 5,
        time2wait: 0x0102,
        time2retain: 0x0304,
        ..Default::default()
    })
    .encode(Digests::default());
    assert_eq!(&enc.header[..4], &[0x26, 0x80, 0x02, 0x00]);
    assert_eq!(&enc.header[40..44], &[1, 2, 3, 4]);

    let enc = Pdu::Reject(Reject {
        reason: 9,
        data_sn: 7,
        ..Default::default()
    })
    .encode(Digests::default());
    assert_eq!(&enc.header[..4], &[0x3f, 0x80, 0x09, 0x00]);
    assert_eq!(&enc.header[16..20], &[0xff; 4]);
    assert_eq!(&enc.header[36..40], &[0, 0, 0, 7]);

    // The Login Request always carries the I bit.
    let enc = Pdu::LoginRequest(LoginRequest {
        csg: 0,
        nsg: 1,
        transit: true,
        ..Default::default()
    })
    .encode(Digests::default());
    assert_eq!(&enc.header[..2], &[0x43, 0x81]);
}

/// The "iSCSI - SCSI Read (10) Command PDU" CRC32C test vector of RFC 3720 appendix
/// B.4 (carried over unchanged by RFC 7143): pins both the CRC variant and the
/// little-endian wire order of the digest, and the SCSI Command field offsets.
#[test]
fn rfc3720_read10_header_digest_vector() {
    #[rustfmt::skip]
    let bhs: [u8; 48] = [
        0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
        0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18,
        0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let mut wire = bhs.to_vec();
    wire.extend_from_slice(&[0x56, 0x3a, 0x96, 0xd9]);
    let d = Digests {
        header: true,
        data: true,
    };
    assert_eq!(check(&wire, d, BIG), Ok(Some(52)));
    let Ok(Pdu::ScsiCommand(cmd)) = parse(Bytes::from(wire), d) else {
        panic!("not parsed as a SCSI Command")
    };
    assert!(cmd.final_ && cmd.read && !cmd.write && !cmd.immediate);
    assert_eq!(
        (cmd.itt, cmd.edtl, cmd.cmd_sn, cmd.exp_stat_sn),
        (0x1400_0000, 0x400, 0x14, 0x18)
    );
    assert_eq!(&cmd.cdb[..], &bhs[32..48]);
    // And the encoder produces the same digest.
    let enc = Pdu::ScsiCommand(cmd).encode(d);
    assert_eq!(&enc.header[48..], &[0x56, 0x3a, 0x96, 0xd9]);
}

fn cmd_with_cdb(cdb: Bytes, bidi: Option<u32>) -> ScsiCommand {
    ScsiCommand {
        final_: true,
        read: true,
        write: bidi.is_some(),
        attr: 1,
        itt: 9,
        edtl: 512,
        cmd_sn: 1,
        cdb,
        bidi_read_len: bidi,
        data: Bytes::from_static(b"abc"),
        ..Default::default()
    }
}

#[test]
fn extended_cdb_ahs() {
    let cdb: Bytes = (0..32u8).map(|b| b + 0x80).collect::<Vec<_>>().into();
    let pdu = Pdu::ScsiCommand(cmd_with_cdb(cdb.clone(), None));
    let enc = pdu.encode(Digests::default());
    // AHSLength 17 (= CDBLength - 15), type 1, reserved, 16 more CDB bytes: 20 bytes.
    assert_eq!(enc.header[4], 5);
    assert_eq!(&enc.header[32..48], &cdb[..16]);
    assert_eq!(&enc.header[48..52], &[0x00, 0x11, 0x01, 0x00]);
    assert_eq!(&enc.header[52..68], &cdb[16..]);
    assert_eq!(enc.header.len(), 68);
    for d in ALL_DIGESTS {
        roundtrip(&pdu, d);
    }
    // Odd lengths need AHS padding; the longest CDB SPC allows is 260 bytes.
    for len in [17usize, 18, 19, 20, 21, 260] {
        let cdb: Bytes = (0..len).map(|b| b as u8).collect::<Vec<_>>().into();
        let pdu = Pdu::ScsiCommand(cmd_with_cdb(cdb, None));
        let enc = pdu.encode(Digests::default());
        assert_eq!(
            usize::from(enc.header[4]) * 4,
            (3 + len - 15).div_ceil(4) * 4,
            "cdb {len}"
        );
        assert_eq!(
            u16::from_be_bytes([enc.header[48], enc.header[49]]) as usize,
            len - 15
        );
        for d in ALL_DIGESTS {
            roundtrip(&pdu, d);
        }
    }
}

#[test]
fn bidi_ahs() {
    let pdu = Pdu::ScsiCommand(cmd_with_cdb(cdb16(0x53), Some(0x0001_0203)));
    let enc = pdu.encode(Digests::default());
    assert_eq!(enc.header[4], 2);
    assert_eq!(
        &enc.header[48..56],
        &[0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x02, 0x03]
    );
    for d in ALL_DIGESTS {
        roundtrip(&pdu, d);
    }
    // Both AHS kinds: Extended CDB first.
    let cdb: Bytes = (0..24u8).collect::<Vec<_>>().into();
    let pdu = Pdu::ScsiCommand(cmd_with_cdb(cdb, Some(7)));
    let enc = pdu.encode(Digests::default());
    assert_eq!(enc.header[4], 3 + 2);
    assert_eq!(&enc.header[48..52], &[0x00, 0x09, 0x01, 0x00]);
    assert_eq!(&enc.header[60..64], &[0x00, 0x05, 0x02, 0x00]);
    for d in ALL_DIGESTS {
        roundtrip(&pdu, d);
    }
}

/// A plain SCSI Command (16-byte CDB) whose AHS area is replaced by `ahs`.
fn with_ahs(ahs: &[u8]) -> Bytes {
    assert_eq!(ahs.len() % 4, 0);
    let enc = Pdu::ScsiCommand(cmd_with_cdb(cdb16(0x28), None)).encode(Digests::default());
    let mut v = enc.header.to_vec();
    v[4] = (ahs.len() / 4) as u8;
    v.extend_from_slice(ahs);
    v.extend_from_slice(&enc.data);
    v.extend_from_slice(&enc.trailer);
    Bytes::from(v)
}

fn assert_invalid(res: Result<Pdu, PduError>, frame: &Bytes) {
    match res {
        Err(PduError::InvalidField { header, .. }) => assert_eq!(header, frame.slice(..BHS_LEN)),
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

#[test]
fn garbage_ahs() {
    let d = Digests::default();
    // AHSLength larger than TotalAHSLength leaves room for.
    let f = with_ahs(&[0x00, 0x10, 0x01, 0x00]);
    assert_eq!(check(&f, d, BIG), Ok(Some(f.len())));
    assert_invalid(parse(f.clone(), d), &f);
    let f = with_ahs(&[0xff, 0xff, 0x01, 0x00, 0, 0, 0, 0]);
    assert_invalid(parse(f.clone(), d), &f);
    // Extended CDB AHS with no CDB bytes.
    assert_invalid(
        parse(with_ahs(&[0x00, 0x01, 0x01, 0x00]), d),
        &with_ahs(&[0x00, 0x01, 0x01, 0x00]),
    );
    assert_invalid(
        parse(with_ahs(&[0x00, 0x00, 0x01, 0x00]), d),
        &with_ahs(&[0x00, 0x00, 0x01, 0x00]),
    );
    // Bidi AHS of the wrong length.
    let f = with_ahs(&[0x00, 0x04, 0x02, 0x00, 0, 0, 0, 0]);
    assert_invalid(parse(f.clone(), d), &f);
    // Duplicates are ambiguous.
    let f = with_ahs(&[0, 5, 2, 0, 0, 0, 0, 1, 0, 5, 2, 0, 0, 0, 0, 2]);
    assert_invalid(parse(f.clone(), d), &f);
    // Unknown AHS types are skipped.
    let Ok(Pdu::ScsiCommand(c)) = parse(with_ahs(&[0x00, 0x05, 0x3c, 0, 1, 2, 3, 4]), d) else {
        panic!()
    };
    assert_eq!(c.cdb, cdb16(0x28));
    assert_eq!(c.bidi_read_len, None);
    // A valid one built by hand.
    let Ok(Pdu::ScsiCommand(c)) = parse(with_ahs(&[0, 2, 1, 0, 0xaa, 0, 0, 0]), d) else {
        panic!()
    };
    assert_eq!(c.cdb.len(), 17);
    assert_eq!(c.cdb[16], 0xaa);
}

fn sample_wire(opcode: u8, d: Digests) -> (Pdu, Vec<u8>) {
    let pdu = samples()
        .into_iter()
        .find(|p| p.opcode() == opcode)
        .expect("sample");
    let wire = pdu.encode(d).to_vec();
    (pdu, wire)
}

#[test]
fn truncated_frames() {
    for d in ALL_DIGESTS {
        let (_, wire) = sample_wire(opcode::SCSI_COMMAND, d);
        for n in 0..wire.len() {
            assert_eq!(check(&wire[..n], d, BIG), Ok(None));
            let res = parse(Bytes::copy_from_slice(&wire[..n]), d);
            assert!(
                matches!(res, Err(PduError::InvalidField { .. })),
                "{n}: {res:?}"
            );
        }
        // One byte too many is just as wrong for parse.
        let mut long = wire.clone();
        long.push(0);
        assert!(matches!(
            parse(Bytes::from(long), d),
            Err(PduError::InvalidField { .. })
        ));
    }
}

#[test]
fn bad_header_digest() {
    let d = Digests {
        header: true,
        data: false,
    };
    let (_, wire) = sample_wire(opcode::NOP_OUT, d);
    for pos in [0usize, 1, 5, 17, 47, 48, 51] {
        let mut bad = wire.clone();
        bad[pos] ^= 0x04;
        let res = check(&bad, d, BIG);
        // A flipped DataSegmentLength may simply look incomplete until more arrives.
        if res != Ok(None) {
            assert_eq!(res, Err(PduError::HeaderDigest), "pos {pos}");
        }
        assert_eq!(
            check(&bad[..52], d, BIG),
            Err(PduError::HeaderDigest),
            "pos {pos}"
        );
        assert_eq!(
            parse(Bytes::from(bad), d),
            Err(PduError::HeaderDigest),
            "pos {pos}"
        );
    }
    // Big-endian digest bytes (a classic interop bug) are wrong.
    let mut be = wire.clone();
    be[48..52].reverse();
    assert_eq!(check(&be, d, BIG), Err(PduError::HeaderDigest));
    // A digest error is fatal and rejects nothing.
    assert!(PduError::HeaderDigest.fatal());
    assert_eq!(PduError::HeaderDigest.reject_reason(), None);
    assert_eq!(PduError::HeaderDigest.header(), None);
}

#[test]
fn bad_data_digest() {
    for d in [
        Digests {
            header: false,
            data: true,
        },
        Digests {
            header: true,
            data: true,
        },
    ] {
        let (pdu, wire) = sample_wire(opcode::DATA_OUT, d);
        let itt = pdu.itt().expect("Data-Out has an ITT");
        let start = BHS_LEN + if d.header { 4 } else { 0 };
        for pos in [
            start,
            start + 500,
            wire.len() - 5,
            wire.len() - 4,
            wire.len() - 1,
        ] {
            let mut bad = wire.clone();
            bad[pos] ^= 0x80;
            // Framing is unaffected: the data digest is parse's business.
            assert_eq!(check(&bad, d, BIG), Ok(Some(bad.len())));
            let err = parse(Bytes::from(bad), d).expect_err("corrupt data accepted");
            assert_eq!(
                err,
                PduError::DataDigest {
                    itt,
                    header: Bytes::copy_from_slice(&wire[..BHS_LEN])
                }
            );
            assert_eq!(err.reject_reason(), Some(0x02));
            assert!(!err.fatal());
            assert_eq!(err.header().map(|h| h.len()), Some(BHS_LEN));
        }
    }
}

#[test]
fn unknown_opcodes() {
    let (_, wire) = sample_wire(opcode::NOP_OUT, Digests::default());
    for op in 0u8..0x40 {
        let mut w = wire.clone();
        w[0] = (w[0] & 0xc0) | op;
        let res = parse(Bytes::from(w.clone()), Digests::default());
        if decode::known_opcode(op) {
            assert!(
                !matches!(res, Err(PduError::UnknownOpcode { .. })),
                "{op:#x}"
            );
        } else {
            let err = res.expect_err("unknown opcode accepted");
            assert_eq!(
                err,
                PduError::UnknownOpcode {
                    opcode: op,
                    header: Bytes::copy_from_slice(&w[..BHS_LEN])
                }
            );
            assert_eq!(err.reject_reason(), Some(0x05));
            assert!(!err.fatal());
        }
    }
}

#[test]
fn oversize_data_segment() {
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = opcode::SCSI_COMMAND;
    bhs[5..8].copy_from_slice(&[0x10, 0x00, 0x00]);
    let d = Digests::default();
    let err = check(&bhs, d, 8192).expect_err("oversize accepted");
    assert_eq!(
        err,
        PduError::DataSegmentTooLong {
            len: 0x10_0000,
            max: 8192,
            header: Bytes::copy_from_slice(&bhs)
        }
    );
    assert_eq!(err.reject_reason(), Some(0x04));
    assert!(err.fatal());
    // Exactly at the limit is fine.
    assert_eq!(check(&bhs, d, 0x10_0000), Ok(None));
    // With header digests, it is reported once the (valid) digest is in.
    let d = Digests {
        header: true,
        data: false,
    };
    assert_eq!(check(&bhs, d, 8192), Ok(None));
    let mut wire = bhs.to_vec();
    wire.extend_from_slice(&digest::header(&bhs));
    assert!(matches!(
        check(&wire, d, 8192),
        Err(PduError::DataSegmentTooLong { .. })
    ));
    // ...and a corrupted length is a header digest error.
    wire[5] = 0x20;
    assert_eq!(check(&wire, d, 8192), Err(PduError::HeaderDigest));
}

#[test]
fn invalid_login_stages() {
    for opcode in [opcode::LOGIN_REQUEST, opcode::LOGIN_RESPONSE] {
        let (_, wire) = sample_wire(opcode, Digests::default());
        for (b1, ok) in [
            (0x87u8, true),
            (0x81, true),
            (0x8b, false),
            (0x82, false),
            (0x02, true),
            (0x08, false),
        ] {
            let mut w = wire.clone();
            w[1] = b1;
            let f = Bytes::from(w);
            let res = parse(f.clone(), Digests::default());
            if ok {
                assert!(res.is_ok(), "{b1:#x}: {res:?}");
            } else {
                assert_invalid(res.clone(), &f);
                assert_eq!(res.err().and_then(|e| e.reject_reason()), Some(0x09));
            }
        }
    }
}

#[test]
fn error_classification() {
    let h = Bytes::from_static(&[0u8; BHS_LEN]);
    let cases = [
        (PduError::HeaderDigest, None, true, false),
        (
            PduError::DataDigest {
                itt: 1,
                header: h.clone(),
            },
            Some(0x02),
            false,
            true,
        ),
        (
            PduError::UnknownOpcode {
                opcode: 0x1f,
                header: h.clone(),
            },
            Some(0x05),
            false,
            true,
        ),
        (
            PduError::InvalidField {
                reason: "x",
                header: h.clone(),
            },
            Some(0x09),
            false,
            true,
        ),
        (
            PduError::DataSegmentTooLong {
                len: 9,
                max: 8,
                header: h.clone(),
            },
            Some(0x04),
            true,
            true,
        ),
    ];
    for (e, reason, fatal, has_header) in cases {
        assert_eq!(e.reject_reason(), reason, "{e}");
        assert_eq!(e.fatal(), fatal, "{e}");
        assert_eq!(e.header().is_some(), has_header, "{e}");
    }
}

#[test]
fn itt_and_opcode() {
    for pdu in samples() {
        let itt = pdu.itt();
        match pdu {
            Pdu::AsyncMessage(_) | Pdu::Reject(_) => assert_eq!(itt, None),
            _ => assert!(itt.is_some()),
        }
    }
    assert!(opcode::is_initiator(opcode::SNACK_REQUEST));
    assert!(!opcode::is_initiator(opcode::NOP_IN));
}

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn poke(buf: &[u8], rng: &mut Rng) {
    for d in ALL_DIGESTS {
        let max = [0usize, 8, 512, BIG][rng.below(4)];
        if let Ok(Some(n)) = check(buf, d, max) {
            assert!(n <= buf.len());
            let _ = parse(Bytes::copy_from_slice(&buf[..n]), d);
        }
        let _ = parse(Bytes::copy_from_slice(buf), d);
        let _ = parse_initiator(Bytes::copy_from_slice(buf), d);
    }
}

#[test]
fn random_input_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = rng.below(160);
        let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= 8 && rng.below(2) == 0 {
            // Make the lengths small enough that whole "PDUs" occur, with plausible
            // opcodes and AHS, so parsing gets past framing.
            buf[0] =
                [0x01, 0x03, 0x05, 0x21, 0x23, 0x25, 0x32, 0x3f][rng.below(8)] | (buf[0] & 0x40);
            buf[4] = (rng.below(4)) as u8;
            buf[5] = 0;
            buf[6] = 0;
            buf[7] = rng.below(24) as u8;
        }
        poke(&buf, &mut rng);
    }
}

#[test]
fn mutated_valid_pdus_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut wires = Vec::new();
    for d in ALL_DIGESTS {
        for pdu in samples() {
            wires.push(pdu.encode(d).to_vec());
        }
        let cdb: Bytes = (0..40u8).collect::<Vec<_>>().into();
        wires.push(
            Pdu::ScsiCommand(cmd_with_cdb(cdb, Some(1)))
                .encode(d)
                .to_vec(),
        );
    }
    for _ in 0..20_000 {
        let mut w = wires[rng.below(wires.len())].clone();
        for _ in 0..=rng.below(4) {
            let pos = rng.below(w.len().min(120));
            w[pos] ^= 1 << rng.below(8);
        }
        if rng.below(4) == 0 {
            let cut = rng.below(w.len());
            w.truncate(cut);
        }
        poke(&w, &mut rng);
    }
}

#[test]
fn parsed_data_shares_the_frame() {
    let d = Digests {
        header: true,
        data: true,
    };
    let (_, wire) = sample_wire(opcode::DATA_OUT, d);
    let frame = Bytes::from(wire);
    let Ok(Pdu::DataOut(p)) = parse(frame.clone(), d) else {
        panic!("not Data-Out")
    };
    let base = frame.as_ptr() as usize;
    let at = p.data.as_ptr() as usize;
    assert_eq!(at - base, BHS_LEN + 4);
    assert_eq!(p.data.len(), 1023);
}

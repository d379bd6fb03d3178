//! PERSISTENT RESERVE IN parameter data and PERSISTENT RESERVE OUT parameter lists
//! (SPC-4 6.15, 6.16), and iSCSI TransportIDs (SPC-4 7.6.4.6). Pure byte work.

use super::state::{Keys, PrState, PrType, Prout};
use crate::scsi::sense::{asc, Sense};
use crate::scsi::shared::NexusId;

/// PROTOCOL IDENTIFIER of iSCSI (SPC-4 7.6.1).
const ISCSI: u8 = 0x5;
/// Between the iSCSI name and the ISID in a format 01b TransportID.
const PORT_SEPARATOR: &str = ",i,0x";

fn header(generation: u32, body: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + body.len());
    d.extend_from_slice(&generation.to_be_bytes());
    d.extend_from_slice(&(body.len() as u32).to_be_bytes());
    d.extend_from_slice(body);
    d
}

/// READ KEYS: every registered key, in registration order.
pub fn read_keys(s: &PrState) -> Vec<u8> {
    let keys: Vec<u8> = s
        .registrations
        .iter()
        .flat_map(|r| r.key.to_be_bytes())
        .collect();
    header(s.generation, &keys)
}

/// READ RESERVATION: the holder's key (zero for all registrants types), scope and type.
pub fn read_reservation(s: &PrState) -> Vec<u8> {
    let (Some(res), Some(key)) = (&s.reservation, s.holder_key()) else {
        return header(s.generation, &[]);
    };
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&key.to_be_bytes());
    d[13] = res.kind.code(); // SCOPE 0h: logical unit
    header(s.generation, &d)
}

/// REPORT CAPABILITIES (SPC-4 6.16.4).
pub fn report_capabilities(s: &PrState) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    d[1] = 8;
    // CRH (5.13.3 exceptions), ATP_C (ALL_TG_PT honoured), PTPL_C; SIP_C stays 0:
    // SPEC_I_PT is refused.
    d[2] = 0x10 | 0x04 | 0x01;
    // TMV with ALLOW COMMANDS 011b: TEST UNIT READY passes every type, and MODE
    // SENSE, REPORT SUPPORTED OPERATION CODES, READ DEFECT DATA pass Write Exclusive.
    d[3] = 0x80 | (0b011 << 4) | u8::from(s.aptpl);
    // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; then EX_AC_AR.
    d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
    d[5] = 0x01;
    d
}

/// READ FULL STATUS: one descriptor per registration, with its TransportID.
pub fn read_full_status(s: &PrState) -> Vec<u8> {
    let mut body = vec![];
    for (i, r) in s.registrations.iter().enumerate() {
        let holder = s.holds(i);
        let tid = transport_id(&r.nexus);
        let mut d = [0u8; 24];
        d[..8].copy_from_slice(&r.key.to_be_bytes());
        d[12] = if r.all_tg_pt { 0x02 } else { 0 } | u8::from(holder);
        if holder {
            d[13] = s.reservation.as_ref().map_or(0, |res| res.kind.code());
        }
        d[18..20].copy_from_slice(&r.nexus.tpgt.to_be_bytes());
        d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        body.extend_from_slice(&d);
        body.extend_from_slice(&tid);
    }
    header(s.generation, &body)
}

/// An iSCSI initiator port TransportID, format 01b: "name,i,0xISID", NUL-terminated
/// and padded to a multiple of four (at least 20 bytes of name).
pub fn transport_id(n: &NexusId) -> Vec<u8> {
    let isid: String = n.isid.iter().map(|b| format!("{b:02x}")).collect();
    let mut name = format!("{}{PORT_SEPARATOR}{isid}", n.initiator).into_bytes();
    name.push(0);
    while name.len() % 4 != 0 || name.len() < 20 {
        name.push(0);
    }
    let mut t = vec![0x40 | ISCSI, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

/// The initiator port a format 01b iSCSI TransportID names (`at`: its offset in the
/// parameter list, for sense pointers). Format 00b names a device, not a port, and
/// REGISTER AND MOVE needs a port, so it is refused like any other.
pub fn parse_transport_id(t: &[u8], at: usize) -> Result<(String, [u8; 6]), Sense> {
    if t.len() < 4 {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if t[0] & 0x0F != ISCSI {
        return Err(Sense::invalid_param(at, Some(3)));
    }
    if t[0] >> 6 != 0b01 {
        return Err(Sense::invalid_param(at, Some(7)));
    }
    let len = usize::from(u16::from_be_bytes([t[2], t[3]]));
    let body = t
        .get(4..4 + len)
        .ok_or_else(|| Sense::invalid_param(at + 2, None))?;
    let text = body.split(|&b| b == 0).next().unwrap_or_default();
    let text = std::str::from_utf8(text).map_err(|_| Sense::invalid_param(at + 4, None))?;
    let lower = text.to_ascii_lowercase();
    let (name, isid) = lower
        .split_once(PORT_SEPARATOR)
        .ok_or_else(|| Sense::invalid_param(at + 4, None))?;
    let bad_isid = || Sense::invalid_param(at + 4 + name.len() + PORT_SEPARATOR.len(), None);
    if name.is_empty() || isid.len() != 12 {
        return Err(bad_isid());
    }
    let mut out = [0u8; 6];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&isid[2 * i..2 * i + 2], 16).map_err(|_| bad_isid())?;
    }
    Ok((name.to_string(), out))
}

fn u64_at(d: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(d[off..off + 8].try_into().expect("8 bytes"))
}

/// Decodes a PERSISTENT RESERVE OUT: service action, SCOPE/TYPE from the CDB, and
/// `data`, the parameter list (PARAMETER LIST LENGTH bytes of Data-Out).
pub fn parse_prout(cdb: &[u8], data: &[u8]) -> Result<(Prout, Keys), Sense> {
    let sa = cdb[1] & 0x1F;
    let (scope, code) = (cdb[2] >> 4, cdb[2] & 0x0F);
    if data.len() < 24 {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let mut keys = Keys {
        key: u64_at(data, 0),
        sa_key: u64_at(data, 8),
        aptpl: false,
    };
    let kind = || -> Result<PrType, Sense> {
        if scope != 0 {
            return Err(Sense::invalid_cdb(2, Some(7)));
        }
        PrType::from_code(code).ok_or_else(|| Sense::invalid_cdb(2, Some(3)))
    };
    if sa == 0x07 {
        keys.aptpl = data[17] & 0x01 != 0;
        let unreg = data[17] & 0x02 != 0;
        let rtpi = u16::from_be_bytes([data[18], data[19]]);
        let tid_len = u32::from_be_bytes(data[20..24].try_into().expect("4 bytes")) as usize;
        let tid = data
            .get(24..24usize.saturating_add(tid_len))
            .ok_or_else(|| Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR))?;
        let (initiator, isid) = parse_transport_id(tid, 24)?;
        let dest = NexusId {
            initiator,
            isid,
            tpgt: rtpi,
        };
        return Ok((Prout::RegisterAndMove { dest, unreg }, keys));
    }
    let flags = data[20];
    if flags & 0x08 != 0 {
        // SPEC_I_PT: registering other initiator ports is not implemented (SIP_C=0).
        return Err(Sense::invalid_param(20, Some(3)));
    }
    if data.len() != 24 {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    keys.aptpl = flags & 0x01 != 0;
    let all_tg_pt = flags & 0x04 != 0;
    let req = match sa {
        0x00 => Prout::Register {
            ignore_existing: false,
            all_tg_pt,
        },
        0x06 => Prout::Register {
            ignore_existing: true,
            all_tg_pt,
        },
        0x01 => Prout::Reserve(kind()?),
        0x02 => Prout::Release { scope, code },
        0x03 => Prout::Clear,
        0x04 => Prout::Preempt {
            kind: kind()?,
            abort: false,
        },
        0x05 => Prout::Preempt {
            kind: kind()?,
            abort: true,
        },
        _ => return Err(Sense::invalid_cdb(1, Some(4))),
    };
    Ok((req, keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::pr::state::Registration;

    fn id(name: &str, last: u8, tpgt: u16) -> NexusId {
        NexusId {
            initiator: name.into(),
            isid: [0x40, 0, 0, 0, 0, last],
            tpgt,
        }
    }

    fn prout_cdb(sa: u8, type_scope: u8) -> [u8; 10] {
        [0x5F, sa, type_scope, 0, 0, 0, 0, 0, 24, 0]
    }

    fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
        let mut d = vec![0u8; 24];
        d[..8].copy_from_slice(&key.to_be_bytes());
        d[8..16].copy_from_slice(&sa_key.to_be_bytes());
        d[20] = flags;
        d
    }

    #[test]
    fn transport_ids_round_trip_and_pad() {
        let n = id("iqn.2000-01.com.example:host", 0x2a, 3);
        let t = transport_id(&n);
        assert_eq!(t[0], 0x45);
        let len = usize::from(u16::from_be_bytes([t[2], t[3]]));
        assert_eq!(len % 4, 0);
        assert_eq!(t.len(), 4 + len);
        assert!(t[4..].starts_with(b"iqn.2000-01.com.example:host,i,0x40000000002a\0"));
        assert_eq!(
            parse_transport_id(&t, 24).unwrap(),
            ("iqn.2000-01.com.example:host".to_string(), n.isid)
        );
        // Short names still get 20 bytes.
        assert_eq!(transport_id(&id("a", 1, 1)).len(), 4 + 20);
    }

    #[test]
    fn transport_ids_without_a_port_or_of_another_protocol_are_refused() {
        let mut t = transport_id(&id("iqn.x", 1, 1));
        t[0] = 0x05; // format 00b: a device name only
        assert_eq!(
            parse_transport_id(&t, 24).unwrap_err().asc,
            asc::INVALID_FIELD_IN_PARAMETER_LIST
        );
        t[0] = 0x41; // SRP
        assert!(parse_transport_id(&t, 24).is_err());
        let mut t = vec![0x45, 0, 0, 12];
        t.extend_from_slice(b"iqn.x,i,0x12");
        assert!(parse_transport_id(&t, 24).is_err(), "short ISID");
    }

    #[test]
    fn register_and_reserve_decode() {
        let (req, k) = parse_prout(&prout_cdb(0, 0), &params(1, 2, 0x05)).unwrap();
        assert_eq!(
            req,
            Prout::Register {
                ignore_existing: false,
                all_tg_pt: true
            }
        );
        assert_eq!((k.key, k.sa_key, k.aptpl), (1, 2, true));
        let (req, _) = parse_prout(&prout_cdb(1, 0x03), &params(1, 0, 0)).unwrap();
        assert_eq!(req, Prout::Reserve(PrType::ExclusiveAccess));
    }

    #[test]
    fn bad_lengths_types_scopes_and_spec_i_pt() {
        let e = parse_prout(&prout_cdb(0, 0), &params(0, 1, 0)[..20]).unwrap_err();
        assert_eq!(e.asc, asc::PARAMETER_LIST_LENGTH_ERROR);
        let mut long = params(0, 1, 0);
        long.push(0);
        let e = parse_prout(&prout_cdb(0, 0), &long).unwrap_err();
        assert_eq!(e.asc, asc::PARAMETER_LIST_LENGTH_ERROR);
        let e = parse_prout(&prout_cdb(1, 0x02), &params(1, 0, 0)).unwrap_err();
        assert_eq!(e.asc, asc::INVALID_FIELD_IN_CDB);
        let e = parse_prout(&prout_cdb(4, 0x13), &params(1, 2, 0)).unwrap_err();
        assert_eq!(e.asc, asc::INVALID_FIELD_IN_CDB);
        let e = parse_prout(&prout_cdb(0, 0), &params(0, 1, 0x08)).unwrap_err();
        assert_eq!(e.asc, asc::INVALID_FIELD_IN_PARAMETER_LIST);
        // RELEASE keeps whatever it was given; it is checked against the reservation.
        let (req, _) = parse_prout(&prout_cdb(2, 0x17), &params(1, 0, 0)).unwrap();
        assert_eq!(req, Prout::Release { scope: 1, code: 7 });
    }

    #[test]
    fn register_and_move_decodes_its_transport_id() {
        let dest = id("iqn.dest", 9, 7);
        let tid = transport_id(&dest);
        let mut d = vec![0u8; 24];
        d[..8].copy_from_slice(&5u64.to_be_bytes());
        d[8..16].copy_from_slice(&6u64.to_be_bytes());
        d[17] = 0x03;
        d[18..20].copy_from_slice(&7u16.to_be_bytes());
        d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        d.extend_from_slice(&tid);
        let (req, k) = parse_prout(&prout_cdb(7, 0), &d).unwrap();
        assert_eq!(req, Prout::RegisterAndMove { dest, unreg: true });
        assert_eq!((k.key, k.sa_key, k.aptpl), (5, 6, true));
        let e = parse_prout(&prout_cdb(7, 0), &d[..d.len() - 4]).unwrap_err();
        assert_eq!(e.asc, asc::PARAMETER_LIST_LENGTH_ERROR);
    }

    #[test]
    fn prin_data_layouts() {
        let mut s = PrState {
            generation: 7,
            ..Default::default()
        };
        assert_eq!(read_keys(&s), [0, 0, 0, 7, 0, 0, 0, 0]);
        assert_eq!(read_reservation(&s), [0, 0, 0, 7, 0, 0, 0, 0]);
        s.registrations.push(Registration {
            nexus: id("iqn.a", 1, 1),
            key: 0xAB,
            all_tg_pt: false,
        });
        s.registrations.push(Registration {
            nexus: id("iqn.b", 2, 1),
            key: 0xCD,
            all_tg_pt: true,
        });
        s.reservation = Some(crate::scsi::pr::state::Reservation {
            holder: id("iqn.a", 1, 1),
            kind: PrType::WriteExclusive,
        });
        let k = read_keys(&s);
        assert_eq!(&k[4..8], &[0, 0, 0, 16]);
        assert_eq!(k[15], 0xAB);
        assert_eq!(k[23], 0xCD);
        let r = read_reservation(&s);
        assert_eq!(&r[4..8], &[0, 0, 0, 16]);
        assert_eq!(r[15], 0xAB);
        assert_eq!(r[21], 0x01);
        let f = read_full_status(&s);
        let total = u32::from_be_bytes(f[4..8].try_into().unwrap()) as usize;
        assert_eq!(f.len(), 8 + total);
        let d0 = &f[8..];
        assert_eq!((d0[7], d0[12], d0[13]), (0xAB, 0x01, 0x01));
        assert_eq!(&d0[18..20], &[0, 1]);
        let tl = u32::from_be_bytes(d0[20..24].try_into().unwrap()) as usize;
        let d1 = &d0[24 + tl..];
        assert_eq!((d1[7], d1[12], d1[13]), (0xCD, 0x02, 0));
        let c = report_capabilities(&s);
        assert_eq!(c.len(), 8);
        assert_eq!((c[1], c[3] & 0x01, c[4], c[5]), (8, 0, 0xEA, 0x01));
    }
}

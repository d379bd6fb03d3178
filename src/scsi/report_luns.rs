//! REPORT LUNS: answered from the nexus's LUN map, whether or not the addressed LUN exists.

use super::sense::Sense;
use super::{cdb, encode_lun, status, Ctx, HandlerResult, LunMap, Response};
use bytes::Bytes;

pub(crate) fn report_luns(c: &Ctx<'_>) -> HandlerResult {
    build(c.luns, c.cdb).map(|data| super::Done {
        status: status::GOOD,
        data,
    })
}

/// Entry point for a REPORT LUNS addressed to a LUN not in the map.
pub(crate) fn run(luns: &LunMap, cdb: &[u8]) -> Response {
    match build(luns, cdb) {
        Ok(data) => Response {
            status: status::GOOD,
            data_in: data,
            sense: Bytes::new(),
        },
        Err(s) => Response {
            status: status::CHECK_CONDITION,
            data_in: Bytes::new(),
            sense: s.encode(false),
        },
    }
}

fn build(luns: &LunMap, cdb: &[u8]) -> Result<Bytes, Sense> {
    let (Some(&select), Some(alloc)) = (cdb.get(2), cdb::u32_at(cdb, 6)) else {
        return Err(Sense::invalid_cdb(cdb.len(), None));
    };
    if alloc < 16 {
        return Err(Sense::invalid_cdb(6, None));
    }
    let list: Vec<u64> = match select {
        // 0: all logical units; 2: all, including well-known ones (we have none).
        0x00 | 0x02 => luns.keys().map(|&l| encode_lun(l)).collect(),
        // 1: only well-known logical units.
        0x01 => Vec::new(),
        _ => return Err(Sense::invalid_cdb(2, None)),
    };
    let mut d = Vec::with_capacity(8 + 8 * list.len());
    d.extend_from_slice(&((8 * list.len()) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for l in list {
        d.extend_from_slice(&l.to_be_bytes());
    }
    d.truncate(alloc as usize);
    Ok(d.into())
}

//! MODE SENSE / MODE SELECT and the mode pages behind them.
//!
//! Pages are data: a default image and a changeable-bits mask per page. MODE SELECT may
//! only flip bits in the mask, which makes validation one generic loop instead of a
//! parser per page, and MODE SENSE's "changeable values" page is the mask itself.

use super::cdb;
use super::pr;
use super::sense::{asc, Sense};
use super::{BoxFut, Ctx, Done};
use crate::backend::BLOCK_SIZE;

struct PageDef {
    code: u8,
    subpage: u8,
    /// Whole page, header bytes included.
    default: &'static [u8],
    changeable: &'static [u8],
}

const RW_ERROR_RECOVERY: u8 = 0x01;
const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0A;
const INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
const ALL_PAGES: u8 = 0x3F;

/// Sorted by page code: MODE SENSE for all pages returns them in this order.
const PAGES: &[PageDef] = &[
    PageDef {
        code: RW_ERROR_RECOVERY,
        subpage: 0,
        // AWRE and ARRE: a virtual volume reallocates transparently.
        default: &[0x01, 0x0A, 0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        changeable: &[0; 12],
    },
    PageDef {
        code: CACHING,
        subpage: 0,
        // WCE set: completed writes may sit in a volatile cache until SYNCHRONIZE CACHE
        // or FUA; an initiator that clears it gets write-through.
        default: &[
            0x08, 0x12, 0x04, 0, 0xFF, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        changeable: &[
            0, 0, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    },
    PageDef {
        code: CONTROL,
        subpage: 0,
        // QUEUE ALGORITHM MODIFIER 1 (unrestricted reordering), BUSY TIMEOUT unlimited.
        // D_SENSE and SWP are changeable.
        default: &[0x0A, 0x0A, 0x00, 0x10, 0x00, 0x00, 0, 0, 0xFF, 0xFF, 0, 0],
        changeable: &[0, 0, 0x04, 0, 0x08, 0, 0, 0, 0, 0, 0, 0],
    },
    PageDef {
        code: INFORMATIONAL_EXCEPTIONS,
        subpage: 0,
        // DEXCPT: there is no failure prediction to report.
        default: &[0x1C, 0x0A, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        changeable: &[0; 12],
    },
];

/// Current values of every page; lives in the unit under its lock.
#[derive(Debug, Clone)]
pub(crate) struct ModePages {
    current: Vec<Vec<u8>>,
}

impl Default for ModePages {
    fn default() -> Self {
        Self {
            current: PAGES.iter().map(|p| p.default.to_vec()).collect(),
        }
    }
}

impl ModePages {
    /// Pages as the volume's shared state holds them; `None` if they do not have the
    /// shape of ours (a state written by a different version), so the defaults stay.
    pub fn from_pages(pages: &[Vec<u8>]) -> Option<Self> {
        let fits = pages.len() == PAGES.len()
            && pages
                .iter()
                .zip(PAGES)
                .all(|(p, d)| p.len() == d.default.len());
        fits.then(|| Self {
            current: pages.to_vec(),
        })
    }

    fn bit(&self, code: u8, byte: usize, mask: u8) -> bool {
        PAGES
            .iter()
            .position(|p| p.code == code && p.subpage == 0)
            .map(|i| self.current[i][byte] & mask != 0)
            .unwrap_or(false)
    }

    /// Control page D_SENSE: descriptor-format sense data.
    pub fn d_sense(&self) -> bool {
        self.bit(CONTROL, 2, 0x04)
    }

    /// Caching page WCE.
    pub fn write_cache(&self) -> bool {
        self.bit(CACHING, 2, 0x04)
    }

    /// Control page SWP: software write protect.
    pub fn swp(&self) -> bool {
        self.bit(CONTROL, 4, 0x08)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

fn page_image(pages: &ModePages, i: usize, pc: Pc) -> Vec<u8> {
    let def = &PAGES[i];
    match pc {
        Pc::Current => pages.current[i].clone(),
        Pc::Default => def.default.to_vec(),
        Pc::Changeable => {
            let mut v = def.changeable.to_vec();
            v[0] = def.default[0];
            v[1] = def.default[1];
            v
        }
    }
}

/// MODE SENSE (6) and (10).
pub(crate) fn mode_sense(c: &Ctx<'_>) -> Result<Done, Sense> {
    let ten = c.cdb[0] == 0x5A;
    let b1 = c.cdb[1];
    let dbd = b1 & 0x08 != 0;
    let llbaa = ten && b1 & 0x10 != 0;
    let pc = match c.cdb[2] >> 6 {
        0 => Pc::Current,
        1 => Pc::Changeable,
        2 => Pc::Default,
        _ => return Err(Sense::illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED)),
    };
    let code = c.cdb[2] & 0x3F;
    let sub = c.cdb[3];
    let alloc = if ten {
        usize::from(cdb::u16_at(c.cdb, 7).unwrap_or(0))
    } else {
        usize::from(c.cdb[4])
    };

    let (pages, wp) = {
        let st = c.unit.lock();
        (st.mode.clone(), c.unit.read_only() || st.mode.swp())
    };
    let mut body = Vec::new();
    let mut found = false;
    for (i, def) in PAGES.iter().enumerate() {
        let wanted = match (code, sub) {
            (ALL_PAGES, 0x00) => def.subpage == 0,
            (ALL_PAGES, 0xFF) => true,
            (c, 0xFF) => def.code == c,
            (c, s) => def.code == c && def.subpage == s,
        };
        if wanted {
            found = true;
            body.extend_from_slice(&page_image(&pages, i, pc));
        }
    }
    if !found {
        // Point at the subpage when the page exists but the subpage does not.
        if code != ALL_PAGES && PAGES.iter().any(|p| p.code == code) {
            return Err(Sense::invalid_cdb(3, None));
        }
        return Err(Sense::invalid_cdb(2, Some(5)));
    }

    let blocks = c.unit.num_blocks();
    let bd: Vec<u8> = if dbd {
        Vec::new()
    } else if llbaa {
        let mut d = vec![0u8; 16];
        d[..8].copy_from_slice(&blocks.to_be_bytes());
        d[12..16].copy_from_slice(&BLOCK_SIZE.to_be_bytes());
        d
    } else {
        let mut d = vec![0u8; 8];
        let n = u32::try_from(blocks).unwrap_or(u32::MAX);
        d[..4].copy_from_slice(&n.to_be_bytes());
        d[5..8].copy_from_slice(&BLOCK_SIZE.to_be_bytes()[1..]);
        d
    };
    // WP for a read-only or software-protected unit; DPOFUA because DPO and FUA are
    // honoured by READ/WRITE/VERIFY.
    let dsp = if wp { 0x80 } else { 0x00 } | 0x10;

    let mut out = if ten {
        let mut h = vec![0u8; 8];
        h[3] = dsp;
        h[4] = if llbaa && !dbd { 0x01 } else { 0 };
        h[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
        h
    } else {
        vec![0, 0, dsp, bd.len() as u8]
    };
    out.extend_from_slice(&bd);
    out.extend_from_slice(&body);
    if ten {
        let len = (out.len() - 2) as u16;
        out[0..2].copy_from_slice(&len.to_be_bytes());
    } else {
        out[0] = (out.len() - 1) as u8;
    }
    Ok(Done::data(out, alloc))
}

/// MODE SELECT (6) and (10). The pages are the volume's: they are stored in its
/// shared state, so the change holds through every gateway.
pub(crate) fn mode_select<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let Some(pages) = selected_pages(c)? else {
            return Ok(Done::good());
        };
        pr::store_mode(c.unit, c.nexus, pages).await?;
        Ok(Done::good())
    })
}

/// Validates a MODE SELECT parameter list against the current pages; the pages it
/// asks for, or `None` when it changes nothing.
fn selected_pages(c: &Ctx<'_>) -> Result<Option<Vec<Vec<u8>>>, Sense> {
    let ten = c.cdb[0] == 0x55;
    let b1 = c.cdb[1];
    if b1 & 0x01 != 0 {
        // SP: nothing is savable.
        return Err(Sense::invalid_cdb(1, Some(0)));
    }
    let pll = if ten {
        usize::from(cdb::u16_at(c.cdb, 7).unwrap_or(0))
    } else {
        usize::from(c.cdb[4])
    };
    if pll == 0 {
        return Ok(None);
    }
    if b1 & 0x10 == 0 {
        // PF=0 would mean vendor-specific page formats, which we have none of.
        return Err(Sense::invalid_cdb(1, Some(4)));
    }
    let data = c.data_out.prefix(pll).to_bytes();
    let hdr = if ten { 8 } else { 4 };
    if data.len() < hdr {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let bdl = if ten {
        usize::from(u16::from_be_bytes([data[6], data[7]]))
    } else {
        usize::from(data[3])
    };
    let long = ten && data[4] & 0x01 != 0;
    let bd_size = if long { 16 } else { 8 };
    if bdl % bd_size != 0 {
        return Err(Sense::invalid_param(if ten { 7 } else { 3 }, None));
    }
    let pages_at = hdr + bdl;
    if data.len() < pages_at {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    for d in (hdr..pages_at).step_by(bd_size) {
        let len_at = d + bd_size - 3;
        let bl = cdb::be(&data, len_at, 3).unwrap_or(0);
        if bl != 0 && bl != u64::from(BLOCK_SIZE) {
            return Err(Sense::invalid_param(len_at, None));
        }
    }

    // `execute` brought the unit's pages up to the volume's before dispatch.
    let cur = c.unit.lock().mode.clone();
    let mut next = cur.clone();
    let mut off = pages_at;
    while off < data.len() {
        let b0 = data[off];
        let spf = b0 & 0x40 != 0;
        let code = b0 & 0x3F;
        let (sub, len, hlen) = if spf {
            let Some(l) = cdb::u16_at(&data, off + 2) else {
                return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
            };
            (data[off + 1], usize::from(l), 4)
        } else {
            let Some(&l) = data.get(off + 1) else {
                return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
            };
            (0, usize::from(l), 2)
        };
        let Some(i) = PAGES
            .iter()
            .position(|p| p.code == code && p.subpage == sub && !spf)
        else {
            return Err(Sense::invalid_param(off, Some(5)));
        };
        let def = &PAGES[i];
        if len + hlen != def.default.len() {
            return Err(Sense::invalid_param(off + 1, None));
        }
        let Some(page) = data.get(off..off + def.default.len()) else {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        };
        for (j, &b) in page.iter().enumerate().skip(2) {
            let cur = next.current[i][j];
            let bad = (b ^ cur) & !def.changeable[j];
            if bad != 0 {
                return Err(Sense::invalid_param(
                    off + j,
                    Some(7 - bad.leading_zeros() as u8),
                ));
            }
            next.current[i][j] = (cur & !def.changeable[j]) | (b & def.changeable[j]);
        }
        off += def.default.len();
    }
    Ok((next.current != cur.current).then_some(next.current))
}

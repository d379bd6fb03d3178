//! Security stage: AuthMethod selection and CHAP (RFC 1994, RFC 7143 section 12.1.3).
//!
//! The exchange, target side:
//! 1. initiator offers `AuthMethod=CHAP,None`; we pick `CHAP` when the target has CHAP
//!    secrets configured, else `None`;
//! 2. initiator sends `CHAP_A=<list>`; we pick 5 (MD5, the only algorithm RFC 7143
//!    defines) and send `CHAP_A=5`, `CHAP_I=<id>`, `CHAP_C=<challenge>`;
//! 3. initiator sends `CHAP_N`, `CHAP_R` and, for mutual CHAP, its own `CHAP_I` and
//!    `CHAP_C`; we verify `CHAP_R = MD5(id || secret || challenge)` and, for mutual
//!    CHAP, answer with `CHAP_N` and `CHAP_R` computed with the mutual secret.
//!
//! Secrets and responses never appear in errors or logs.

use md5::{Digest, Md5};
use rand::RngCore;

use super::ChapSecrets;

/// Length of our challenge. RFC 1994 allows any length; 16 bytes (the MD5 output size)
/// is what other targets use and every initiator accepts.
pub const CHALLENGE_LEN: usize = 16;

/// Longest binary value (challenge, response) we decode from the initiator.
pub const MAX_BINARY_LEN: usize = 1024;

/// Why authentication failed. All variants are reported as login status 0x0201.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the target requires CHAP but the initiator offered AuthMethod={offered:.64}; configure CHAP on the initiator")]
    ChapRequired { offered: String },
    #[error("the initiator offered AuthMethod={offered:.64}, but no CHAP credentials are configured for this target; configure CHAP or let the initiator use None")]
    NoAcceptableMethod { offered: String },
    #[error("the initiator tried to skip authentication but the target requires CHAP; configure CHAP on the initiator")]
    SkippedAuthentication,
    #[error("the initiator offered CHAP algorithms {offered:.64}; only 5 (MD5) is supported")]
    NoAlgorithm { offered: String },
    #[error("CHAP user name {got:.64?} does not match the configured one")]
    WrongUser { got: String },
    #[error("CHAP response for user {user:.64?} is wrong: the initiator's CHAP secret differs from the configured one")]
    WrongResponse { user: String },
    #[error("the initiator requested mutual CHAP but no mutual CHAP credentials are configured for this target")]
    MutualNotConfigured,
    #[error("the initiator's mutual CHAP challenge equals ours (possible reflection attack)")]
    Reflection,
    #[error("CHAP key {key} has a malformed value")]
    BadValue { key: &'static str },
    #[error("CHAP protocol violation: {0}")]
    Sequence(&'static str),
}

/// Where the security stage is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// No AuthMethod negotiated yet.
    Start,
    /// AuthMethod=None was chosen: authentication is complete.
    NoneChosen,
    /// AuthMethod=CHAP chosen, waiting for CHAP_A.
    AwaitAlgorithm,
    /// Challenge sent, waiting for CHAP_N/CHAP_R.
    AwaitResponse { id: u8, challenge: Vec<u8> },
    /// CHAP verified.
    Done,
}

/// The target side of the security stage for one login.
#[derive(Debug)]
pub struct Authenticator {
    secrets: Option<ChapSecrets>,
    state: State,
}

impl Authenticator {
    /// `secrets` is the CHAP configuration for the target (or discovery); `None`
    /// means no authentication is required.
    pub fn new(secrets: Option<ChapSecrets>) -> Self {
        Authenticator {
            secrets,
            state: State::Start,
        }
    }

    /// Whether the target insists on CHAP.
    pub fn required(&self) -> bool {
        self.secrets.is_some()
    }

    /// Whether the initiator may now leave the security stage.
    pub fn complete(&self) -> bool {
        match self.state {
            State::NoneChosen | State::Done => true,
            // The initiator may skip AuthMethod entirely when we need none.
            State::Start => !self.required(),
            State::AwaitAlgorithm | State::AwaitResponse { .. } => false,
        }
    }

    /// Answers the security keys of one key text (in order of our protocol steps).
    pub fn answer(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<Vec<(String, String)>, AuthError> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        // Once CHAP is under way every request must advance it; a request that does not
        // would make both sides repeat themselves until the login times out.
        match self.state {
            State::AwaitAlgorithm if get("CHAP_A").is_none() => {
                return Err(AuthError::Sequence(
                    "the initiator did not send CHAP_A after AuthMethod=CHAP",
                ));
            }
            State::AwaitResponse { .. } if get("CHAP_N").is_none() && get("CHAP_R").is_none() => {
                return Err(AuthError::Sequence(
                    "the initiator did not answer the CHAP challenge",
                ));
            }
            _ => {}
        }
        let mut out = Vec::new();
        if let Some(offer) = get("AuthMethod") {
            if self.state != State::Start {
                return Err(AuthError::Sequence(
                    "AuthMethod sent after it was negotiated",
                ));
            }
            let chosen = self.choose_method(offer)?;
            out.push(("AuthMethod".to_string(), chosen.to_string()));
        }
        if let Some(algs) = get("CHAP_A") {
            if self.state != State::AwaitAlgorithm {
                return Err(AuthError::Sequence(
                    "CHAP_A sent before AuthMethod=CHAP was agreed",
                ));
            }
            if !algs.split(',').any(|a| a == "5") {
                return Err(AuthError::NoAlgorithm {
                    offered: algs.to_string(),
                });
            }
            let mut rng = rand::thread_rng();
            let id = (rng.next_u32() & 0xff) as u8;
            let mut challenge = vec![0u8; CHALLENGE_LEN];
            rng.fill_bytes(&mut challenge);
            out.push(("CHAP_A".into(), "5".into()));
            out.push(("CHAP_I".into(), id.to_string()));
            out.push(("CHAP_C".into(), encode_hex(&challenge)));
            self.state = State::AwaitResponse { id, challenge };
        }
        let (n, r) = (get("CHAP_N"), get("CHAP_R"));
        let (mi, mc) = (get("CHAP_I"), get("CHAP_C"));
        if n.is_none() && r.is_none() {
            if mi.is_some() || mc.is_some() {
                return Err(AuthError::Sequence(
                    "CHAP_I/CHAP_C sent without CHAP_N and CHAP_R",
                ));
            }
            return Ok(out);
        }
        let State::AwaitResponse { id, challenge } = &self.state else {
            return Err(AuthError::Sequence("CHAP_N/CHAP_R sent before a challenge"));
        };
        let (Some(name), Some(resp)) = (n, r) else {
            return Err(AuthError::Sequence(
                "CHAP_N and CHAP_R must be sent together",
            ));
        };
        let Some(secrets) = &self.secrets else {
            return Err(AuthError::Sequence("CHAP response without CHAP configured"));
        };
        let resp = decode_binary(resp).ok_or(AuthError::BadValue { key: "CHAP_R" })?;
        if name != secrets.username {
            return Err(AuthError::WrongUser {
                got: name.to_string(),
            });
        }
        let expected = chap_response(*id, secrets.secret.as_bytes(), challenge);
        if !constant_time_eq(&expected, &resp) {
            return Err(AuthError::WrongResponse {
                user: name.to_string(),
            });
        }
        match (mi, mc) {
            (None, None) => {}
            (Some(mi), Some(mc)) => {
                let mid = super::keys::parse_number(mi)
                    .filter(|n| *n <= 255)
                    .ok_or(AuthError::BadValue { key: "CHAP_I" })? as u8;
                let mchal = decode_binary(mc).ok_or(AuthError::BadValue { key: "CHAP_C" })?;
                if mchal.is_empty() {
                    return Err(AuthError::BadValue { key: "CHAP_C" });
                }
                // RFC 7143 12.1.3: a challenge equal to ours means someone tries to make
                // us compute the answer to our own challenge.
                if constant_time_eq(&mchal, challenge) {
                    return Err(AuthError::Reflection);
                }
                let Some((muser, msecret)) = &secrets.mutual else {
                    return Err(AuthError::MutualNotConfigured);
                };
                let mresp = chap_response(mid, msecret.as_bytes(), &mchal);
                out.push(("CHAP_N".into(), muser.clone()));
                out.push(("CHAP_R".into(), encode_hex(&mresp)));
            }
            _ => {
                return Err(AuthError::Sequence(
                    "mutual CHAP needs both CHAP_I and CHAP_C from the initiator",
                ))
            }
        }
        self.state = State::Done;
        Ok(out)
    }

    fn choose_method(&mut self, offer: &str) -> Result<&'static str, AuthError> {
        let offered = |m: &str| offer.split(',').any(|o| o == m);
        if self.required() {
            if offered("CHAP") {
                self.state = State::AwaitAlgorithm;
                return Ok("CHAP");
            }
            return Err(AuthError::ChapRequired {
                offered: offer.to_string(),
            });
        }
        if offered("None") {
            self.state = State::NoneChosen;
            return Ok("None");
        }
        Err(AuthError::NoAcceptableMethod {
            offered: offer.to_string(),
        })
    }
}

/// The CHAP response: MD5(id || secret || challenge), RFC 1994 section 4.1.
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Compares without an early exit, so timing does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Encodes bytes as an RFC 7143 hex constant (`0x...`).
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Decodes an RFC 7143 binary value: `0x`/`0X` hex or `0b`/`0B` base64. Returns None
/// for anything else or when longer than [`MAX_BINARY_LEN`] bytes.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if v.len() < 2 {
        return None;
    }
    let (prefix, body) = v.split_at(2);
    let out = match prefix {
        "0x" | "0X" => decode_hex(body)?,
        "0b" | "0B" => decode_base64(body)?,
        _ => return None,
    };
    (out.len() <= MAX_BINARY_LEN).then_some(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() > MAX_BINARY_LEN * 2 + 1 {
        return None;
    }
    let digits: Vec<u8> = s
        .bytes()
        .map(|c| (c as char).to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()?;
    // An odd number of digits has an implied leading zero.
    let pad = digits.len() % 2;
    let mut out = Vec::with_capacity(digits.len().div_ceil(2));
    if pad == 1 {
        out.push(digits[0]);
    }
    for pair in digits[pad..].chunks(2) {
        out.push(pair[0] << 4 | pair[1]);
    }
    Some(out)
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.as_bytes();
    if s.is_empty() || !s.len().is_multiple_of(4) || s.len() > (MAX_BINARY_LEN / 3 + 1) * 4 {
        return None;
    }
    let pad = s.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let body = &s[..s.len() - pad];
    for chunk in body.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = acc << 6 | val(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&acc.to_be_bytes()[1..]),
            3 => out.extend_from_slice(&(acc << 6).to_be_bytes()[1..3]),
            2 => out.push((acc >> 4) as u8),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("0x00ff10"), Some(vec![0, 0xff, 0x10]));
        assert_eq!(decode_binary("0XABC"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAP8Q"), Some(vec![0, 0xff, 0x10]));
        assert_eq!(decode_binary("0bAQ=="), Some(vec![1]));
        assert_eq!(decode_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("0bA"), None);
        assert_eq!(decode_binary("0b!!!!"), None);
        assert_eq!(decode_binary("1234"), None);
        assert_eq!(decode_binary(""), None);
        assert_eq!(decode_binary(&format!("0x{}", "00".repeat(1025))), None);
        assert_eq!(encode_hex(&[0, 0xab]), "0x00ab");
    }

    #[test]
    fn md5_response_matches_rfc1994() {
        // Independent check against the md5 of the concatenation.
        let r = chap_response(7, b"secret", &[1, 2, 3]);
        let mut h = Md5::new();
        h.update([7u8, b's', b'e', b'c', b'r', b'e', b't', 1, 2, 3]);
        assert_eq!(r, <[u8; 16]>::from(h.finalize()));
    }

    #[test]
    fn none_when_not_required() {
        let mut a = Authenticator::new(None);
        assert!(a.complete());
        let out = a.answer(&[p("AuthMethod", "CHAP,None")]).unwrap();
        assert_eq!(out, vec![p("AuthMethod", "None")]);
        assert!(a.complete());
        let mut a = Authenticator::new(None);
        assert!(matches!(
            a.answer(&[p("AuthMethod", "CHAP")]),
            Err(AuthError::NoAcceptableMethod { .. })
        ));
    }

    #[test]
    fn chap_out_of_sequence() {
        let secrets = ChapSecrets {
            username: "u".into(),
            secret: "s".into(),
            mutual: None,
        };
        let mut a = Authenticator::new(Some(secrets.clone()));
        assert!(matches!(
            a.answer(&[p("CHAP_A", "5")]),
            Err(AuthError::Sequence(_))
        ));
        let mut a = Authenticator::new(Some(secrets.clone()));
        a.answer(&[p("AuthMethod", "CHAP")]).unwrap();
        assert!(matches!(
            a.answer(&[p("CHAP_N", "u"), p("CHAP_R", "0x00")]),
            Err(AuthError::Sequence(_))
        ));
        let mut a = Authenticator::new(Some(secrets));
        a.answer(&[p("AuthMethod", "CHAP")]).unwrap();
        assert!(matches!(
            a.answer(&[p("CHAP_A", "6,7")]),
            Err(AuthError::NoAlgorithm { .. })
        ));
    }
}

//! The `key=value` text format of Login and Text PDUs (RFC 7143 section 6.1).
//!
//! Pure functions over bytes: every pair is `key=value` terminated by a NUL byte. This
//! layer only checks the *syntax* (so that one malformed PDU cannot smuggle anything
//! past the negotiation layer); which keys are allowed, duplicates and value ranges
//! are the business of the login and text negotiation code.

use bytes::{BufMut, Bytes, BytesMut};

/// Longest key name the RFC allows (section 6.1: "a maximum of 63 bytes").
pub const MAX_KEY_LEN: usize = 63;

/// Longest value we accept. RFC 7143 limits ordinary values to 255 bytes, but binary
/// values (CHAP challenges and responses) may be longer, and every implementation must
/// accept 8192 bytes of key text per negotiation sequence, so no legitimate value can
/// exceed that. The per-key 255-byte limit is applied by the negotiation layer.
pub const MAX_VALUE_LEN: usize = 8192;

/// Why a key text could not be parsed. Every variant means the peer sent bytes that are
/// not valid RFC 7143 key text, so the exchange fails (Login: initiator error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("key text item {index} has no '=': the initiator sent malformed key=value data")]
    MissingEquals { index: usize },
    #[error("key text item {index} is not valid UTF-8: the initiator's text is corrupted")]
    NotUtf8 { index: usize },
    #[error("key text item {index} has an empty key name")]
    EmptyKey { index: usize },
    #[error("key {key:?} is {len} bytes long; RFC 7143 allows at most 63")]
    KeyTooLong { key: String, len: usize },
    #[error("key {key:?} contains characters not allowed in a key name")]
    InvalidKeyName { key: String },
    #[error("value of key {key:?} is {len} bytes long; at most 8192 are accepted")]
    ValueTooLong { key: String, len: usize },
    #[error("key text item {index} is empty (two NUL bytes in a row before the end of the data)")]
    EmptyItem { index: usize },
    #[error("the key text does not end with a NUL byte: the PDU was truncated or malformed")]
    Unterminated,
    #[error("key {key:?} appears more than once in one request")]
    DuplicateKey { key: String },
}

/// Whether `c` may appear in a key name: RFC 7143 section 6.1 allows letters, digits,
/// `.`, `-`, `+`, `@` and `_`; `#` is added because public extension keys are spelled
/// `X#name` (section 13.22).
fn key_char_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

/// Parses NUL-terminated `key=value` pairs, keeping their order. NUL bytes after the
/// last pair (data segment padding some initiators include in the length) are ignored.
/// An empty `data` gives an empty list.
pub fn parse_keys(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    // Strip trailing padding NULs but keep the terminator of the last pair.
    let mut end = data.len();
    while end > 0 && data[end - 1] == 0 {
        end -= 1;
    }
    if end == 0 {
        return Ok(Vec::new());
    }
    if end == data.len() {
        return Err(TextError::Unterminated);
    }
    let mut out = Vec::new();
    for (index, item) in data[..end].split(|&b| b == 0).enumerate() {
        if item.is_empty() {
            return Err(TextError::EmptyItem { index });
        }
        let eq = item
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TextError::MissingEquals { index })?;
        let (k, v) = (&item[..eq], &item[eq + 1..]);
        let key = std::str::from_utf8(k).map_err(|_| TextError::NotUtf8 { index })?;
        let value = std::str::from_utf8(v).map_err(|_| TextError::NotUtf8 { index })?;
        if key.is_empty() {
            return Err(TextError::EmptyKey { index });
        }
        if key.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong {
                key: truncate(key),
                len: key.len(),
            });
        }
        if !key.bytes().all(key_char_ok) {
            return Err(TextError::InvalidKeyName { key: truncate(key) });
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong {
                key: key.to_string(),
                len: value.len(),
            });
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Shortens hostile input before it is put in an error message (and so in logs).
fn truncate(s: &str) -> String {
    s.chars().take(MAX_KEY_LEN + 1).collect()
}

/// Encodes pairs as `key=value\0` each, in order. No padding: that is the PDU codec's.
pub fn encode_keys(pairs: &[(String, String)]) -> Bytes {
    let len = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut buf = BytesMut::with_capacity(len);
    for (k, v) in pairs {
        buf.put_slice(k.as_bytes());
        buf.put_u8(b'=');
        buf.put_slice(v.as_bytes());
        buf.put_u8(0);
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn parses_in_order() {
        let pairs = parse_keys(b"InitiatorName=iqn.x\0SessionType=Normal\0").unwrap();
        assert_eq!(
            pairs,
            vec![p("InitiatorName", "iqn.x"), p("SessionType", "Normal")]
        );
    }

    #[test]
    fn empty_data_is_no_keys() {
        assert_eq!(parse_keys(b"").unwrap(), vec![]);
        assert_eq!(parse_keys(b"\0\0\0").unwrap(), vec![]);
    }

    #[test]
    fn tolerates_padding() {
        let pairs = parse_keys(b"A=1\0\0\0\0").unwrap();
        assert_eq!(pairs, vec![p("A", "1")]);
    }

    #[test]
    fn empty_value_and_equals_in_value() {
        let pairs = parse_keys(b"SendTargets=\0X-a=b=c\0").unwrap();
        assert_eq!(pairs, vec![p("SendTargets", ""), p("X-a", "b=c")]);
    }

    #[test]
    fn rejects_missing_equals() {
        assert_eq!(
            parse_keys(b"A=1\0Bogus\0"),
            Err(TextError::MissingEquals { index: 1 })
        );
    }

    #[test]
    fn rejects_unterminated() {
        assert_eq!(parse_keys(b"A=1"), Err(TextError::Unterminated));
    }

    #[test]
    fn rejects_non_utf8() {
        assert_eq!(
            parse_keys(b"A=\xff\xfe\0"),
            Err(TextError::NotUtf8 { index: 0 })
        );
        assert_eq!(
            parse_keys(b"\xc3=1\0"),
            Err(TextError::NotUtf8 { index: 0 })
        );
    }

    #[test]
    fn rejects_empty_key_and_bad_chars() {
        assert_eq!(parse_keys(b"=1\0"), Err(TextError::EmptyKey { index: 0 }));
        assert!(matches!(
            parse_keys(b"A B=1\0"),
            Err(TextError::InvalidKeyName { .. })
        ));
        assert!(parse_keys(b"X#NodeArchitecture=x\0").is_ok());
    }

    #[test]
    fn rejects_empty_item_in_middle() {
        assert_eq!(
            parse_keys(b"A=1\0\0B=2\0"),
            Err(TextError::EmptyItem { index: 1 })
        );
    }

    #[test]
    fn key_length_limit() {
        let ok = format!("{}=1\0", "K".repeat(63));
        assert!(parse_keys(ok.as_bytes()).is_ok());
        let long = format!("{}=1\0", "K".repeat(64));
        assert!(matches!(
            parse_keys(long.as_bytes()),
            Err(TextError::KeyTooLong { len: 64, .. })
        ));
    }

    #[test]
    fn value_length_limit() {
        let ok = format!("CHAP_C=0x{}\0", "a".repeat(8192 - 2));
        assert!(parse_keys(ok.as_bytes()).is_ok());
        let long = format!("CHAP_C=0x{}\0", "a".repeat(8192));
        assert!(matches!(
            parse_keys(long.as_bytes()),
            Err(TextError::ValueTooLong { .. })
        ));
    }

    #[test]
    fn encode_round_trips() {
        let pairs = vec![
            p("TargetName", "iqn.t"),
            p("TargetAddress", "1.2.3.4:3260,1"),
        ];
        let enc = encode_keys(&pairs);
        assert_eq!(
            &enc[..],
            b"TargetName=iqn.t\0TargetAddress=1.2.3.4:3260,1\0"
        );
        assert_eq!(parse_keys(&enc).unwrap(), pairs);
        assert!(encode_keys(&[]).is_empty());
    }
}

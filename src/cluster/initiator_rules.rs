//! The rules a SCSI initiator's settings follow wherever they are typed: scli options,
//! `conf/initiators.toml`, the MDM. One copy, so that what scli accepts the map file
//! accepts too, and a refusal reads the same from both.

use super::api::{AccessMode, Chap};

/// The highest LUN an initiator can be given (SAM flat-space addressing, 14 bits).
pub const MAX_LUN: u64 = 16383;

/// Shortest CHAP secret accepted: RFC 7143 section 12.1.3 asks for at least 96 bits,
/// since a shorter one can be guessed offline from a single captured login.
pub const MIN_SECRET: usize = 12;

/// Longest CHAP secret accepted; initiators (ESXi, open-iscsi) cap theirs lower still.
pub const MAX_SECRET: usize = 255;

/// Which CHAP setting a [`ChapError`] is about, so each caller can name it its own way
/// (`--mutual_chap_secret` in scli, `mutual_secret` in the map file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapPart {
    Username,
    Secret,
    MutualUsername,
    MutualSecret,
}

/// A CHAP setting that is refused. The messages never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error(
        "the CHAP username is empty; give the name the host logs in with (hosts default to \
         their IQN)"
    )]
    EmptyUsername,
    #[error(
        "the CHAP secret is {len} bytes long; give {MIN_SECRET} to {MAX_SECRET} (a shorter \
         one can be guessed from one captured login)"
    )]
    SecretLength { len: usize },
    #[error("the mutual CHAP username is empty; give the name the target answers with")]
    EmptyMutualUsername,
    #[error("the mutual CHAP secret is {len} bytes long; give {MIN_SECRET} to {MAX_SECRET}")]
    MutualSecretLength { len: usize },
    #[error(
        "the mutual CHAP secret is the same as the CHAP secret; RFC 7143 forbids one secret \
         for both directions, choose another"
    )]
    SameSecret,
}

impl ChapError {
    /// The setting to fix.
    pub fn part(&self) -> ChapPart {
        match self {
            ChapError::EmptyUsername => ChapPart::Username,
            ChapError::SecretLength { .. } => ChapPart::Secret,
            ChapError::EmptyMutualUsername => ChapPart::MutualUsername,
            ChapError::MutualSecretLength { .. } | ChapError::SameSecret => ChapPart::MutualSecret,
        }
    }
}

/// Checks a username (one-way CHAP's, typed by the admin; the IQN default is never empty).
pub fn check_username(username: &str) -> Result<(), ChapError> {
    if username.is_empty() {
        return Err(ChapError::EmptyUsername);
    }
    Ok(())
}

/// Checks the secret and the optional mutual (username, secret): lengths, and that the
/// two directions do not share a secret.
pub fn check_secrets(secret: &str, mutual: Option<&(String, String)>) -> Result<(), ChapError> {
    let ok = |s: &str| (MIN_SECRET..=MAX_SECRET).contains(&s.len());
    if !ok(secret) {
        return Err(ChapError::SecretLength { len: secret.len() });
    }
    let Some((username, mutual_secret)) = mutual else {
        return Ok(());
    };
    if username.is_empty() {
        return Err(ChapError::EmptyMutualUsername);
    }
    if !ok(mutual_secret) {
        return Err(ChapError::MutualSecretLength {
            len: mutual_secret.len(),
        });
    }
    if mutual_secret == secret {
        return Err(ChapError::SameSecret);
    }
    Ok(())
}

/// Checks a whole CHAP setting.
pub fn check_chap(chap: &Chap) -> Result<(), ChapError> {
    check_username(&chap.username)?;
    check_secrets(&chap.secret, chap.mutual.as_ref())
}

/// Reads an access mode as admins write it: `ReadWrite`/`ReadOnly` in any case, or
/// ScaleIO's `READ_WRITE`/`READ_ONLY`.
pub fn access_mode(s: &str) -> Option<AccessMode> {
    let folded: String = s
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    match folded.as_str() {
        "readwrite" => Some(AccessMode::ReadWrite),
        "readonly" => Some(AccessMode::ReadOnly),
        _ => None,
    }
}

/// How an access mode is written in the map file and scli's answers.
pub fn access_mode_name(mode: AccessMode) -> &'static str {
    match mode {
        AccessMode::ReadWrite => "ReadWrite",
        AccessMode::ReadOnly => "ReadOnly",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chap(username: &str, secret: &str, mutual: Option<(&str, &str)>) -> Chap {
        Chap {
            username: username.into(),
            secret: secret.into(),
            mutual: mutual.map(|(u, s)| (u.into(), s.into())),
        }
    }

    #[test]
    fn good_chap_passes() {
        assert_eq!(check_chap(&chap("u", "twelve-bytes", None)), Ok(()));
        assert_eq!(
            check_chap(&chap("u", &"s".repeat(255), Some(("t", "another-secret")))),
            Ok(())
        );
    }

    #[test]
    fn each_bad_setting_names_its_part() {
        let cases = [
            (chap("", "twelve-bytes", None), ChapPart::Username),
            (chap("u", "s3cr3", None), ChapPart::Secret),
            (chap("u", &"s".repeat(256), None), ChapPart::Secret),
            (
                chap("u", "twelve-bytes", Some(("", "another-secret"))),
                ChapPart::MutualUsername,
            ),
            (
                chap("u", "twelve-bytes", Some(("t", "s3cr3"))),
                ChapPart::MutualSecret,
            ),
            (
                chap("u", "twelve-bytes", Some(("t", "twelve-bytes"))),
                ChapPart::MutualSecret,
            ),
        ];
        for (c, part) in cases {
            let e = check_chap(&c).unwrap_err();
            assert_eq!(e.part(), part, "{c:?}");
            assert!(!e.to_string().contains(&c.secret), "{e} shows the secret");
        }
        assert_eq!(
            check_secrets("short", None).unwrap_err().to_string(),
            "the CHAP secret is 5 bytes long; give 12 to 255 (a shorter one can be guessed \
             from one captured login)"
        );
    }

    #[test]
    fn access_modes_in_both_spellings() {
        for (s, m) in [
            ("ReadWrite", AccessMode::ReadWrite),
            ("readwrite", AccessMode::ReadWrite),
            ("READ_WRITE", AccessMode::ReadWrite),
            ("ReadOnly", AccessMode::ReadOnly),
            ("READ_ONLY", AccessMode::ReadOnly),
            ("read-only", AccessMode::ReadOnly),
        ] {
            assert_eq!(access_mode(s), Some(m), "{s}");
        }
        for bad in ["", "rw", "write", "NO_ACCESS"] {
            assert_eq!(access_mode(bad), None, "{bad}");
        }
        for m in [AccessMode::ReadWrite, AccessMode::ReadOnly] {
            assert_eq!(access_mode(access_mode_name(m)), Some(m));
        }
    }
}

//! iSCSI names as RFC 3720 section 3.2.6 defines them, checked before an initiator is
//! registered so a typo is refused by scli instead of silently never matching a login.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("iSCSI name {0:?} is empty")]
    Empty(String),
    #[error("iSCSI name {0:?} is longer than 223 bytes")]
    TooLong(String),
    #[error("iSCSI name {0:?} must start with iqn., eui. or naa.")]
    Type(String),
    #[error("iSCSI name {name:?}: {why}")]
    Form { name: String, why: &'static str },
}

/// The canonical (lower-case) form of a valid name. iSCSI names compare
/// case-insensitively (RFC 3722 stringprep folds case), so one registry key per host.
pub fn normalize(name: &str) -> Result<String, NameError> {
    let n = name.trim().to_ascii_lowercase();
    let bad = |why| NameError::Form {
        name: name.to_string(),
        why,
    };
    if n.is_empty() {
        return Err(NameError::Empty(name.to_string()));
    }
    if n.len() > 223 {
        return Err(NameError::TooLong(name.to_string()));
    }
    if let Some(rest) = n.strip_prefix("iqn.") {
        // iqn.yyyy-mm.reversed.domain[:anything]
        let b = rest.as_bytes();
        let date_ok = b.len() >= 7
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && (1..=12).contains(&((b[5] - b'0') * 10 + (b[6] - b'0')));
        if !date_ok {
            return Err(bad(
                "an iqn. name continues with the date yyyy-mm, e.g. iqn.1998-01.com.vmware:host",
            ));
        }
        let after = &rest[7..];
        let Some(domain) = after.strip_prefix('.') else {
            return Err(bad(
                "an iqn. name needs .reversed-domain after the date, e.g. iqn.1998-01.com.vmware",
            ));
        };
        let naming = domain.split(':').next().unwrap_or("");
        if naming.is_empty() || naming.split('.').any(str::is_empty) {
            return Err(bad(
                "the naming authority after the date is a reversed domain such as com.vmware",
            ));
        }
        if !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        {
            return Err(bad("only letters, digits, '.', '-' and ':' may appear"));
        }
        return Ok(n);
    }
    let hex = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
    };
    if let Some(rest) = n.strip_prefix("eui.") {
        return if hex(rest, &[16]) {
            Ok(n)
        } else {
            Err(bad("an eui. name is followed by 16 hex digits"))
        };
    }
    if let Some(rest) = n.strip_prefix("naa.") {
        return if hex(rest, &[16, 32]) {
            Ok(n)
        } else {
            Err(bad("a naa. name is followed by 16 or 32 hex digits"))
        };
    }
    Err(NameError::Type(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_forms_and_folds_case() {
        assert_eq!(
            normalize("iqn.1998-01.com.vmware:svrsan2011-4F2A").unwrap(),
            "iqn.1998-01.com.vmware:svrsan2011-4f2a"
        );
        assert!(normalize("iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test").is_ok());
        assert!(normalize("iqn.2026-11.io.dreadnought").is_ok());
        assert!(normalize("eui.02004567A425678D").is_ok());
        assert!(normalize("naa.52004567BA64678D").is_ok());
        assert!(normalize("naa.62004567BA64678D0123456789ABCDEF").is_ok());
    }

    #[test]
    fn refuses_malformed_names() {
        for bad in [
            "",
            "svrsan2011",
            "iqn.98-01.com.vmware:x",
            "iqn.1998-13.com.vmware:x",
            "iqn.1998-01:x",
            "iqn.1998-01..com:x",
            "iqn.1998-01.com.vmware:host name",
            "iqn.1998-01.com.vmware:host_name",
            "eui.02004567A425678",
            "eui.02004567A425678G",
            "naa.1234",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(matches!(
            normalize(&format!("iqn.1998-01.com.x:{}", "a".repeat(300))),
            Err(NameError::TooLong(_))
        ));
    }
}

//! The declarative initiator map, `conf/initiators.toml`: every SCSI initiator (host)
//! allowed in, its CHAP secrets and the volumes it sees at which LUN. `scli
//! --apply_initiator_map` sends it to the MDM, and `dreadnought up` applies it again on
//! every edit, so this module only reads and writes text: no I/O.
//!
//! The whole file is checked before anything is applied, and the first problem is
//! reported with its line, because a map is applied all or nothing: a half-right file
//! must not lock a host out. Shape problems (TOML syntax, unknown keys, wrong types)
//! are found first, then content problems in file order.

use super::api::{AccessMode, Chap, InitiatorMap, MapChap, MapEntry, MapInitiator};
use super::initiator_rules::{self, ChapError, ChapPart, MAX_LUN};
use super::iscsi_name;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use toml::Spanned;

/// Longest object name, as the MDM counts it.
const MAX_NAME: usize = 64;

/// What `chap` says to keep the secrets the MDM holds (exports never hold secrets).
const UNCHANGED: &str = "unchanged";

/// A parsed and checked map file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFile {
    pub map: InitiatorMap,
    /// Per initiator of `map`, the line of each mapping's `volume`.
    volume_lines: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct MapFileError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Parses and checks a whole map file. An empty file is an empty map: no host sees
/// any volume.
pub fn parse(text: &str) -> Result<MapFile, MapFileError> {
    // Notepad starts UTF-8 files with a byte-order mark, which TOML does not allow.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw: RawFile = toml::from_str(text).map_err(|e| MapFileError {
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        message: e.message().trim().replace('\n', "; "),
    })?;
    Checker {
        text,
        problems: Vec::new(),
    }
    .check(raw)
}

impl MapFile {
    /// Checks that every mapped volume is one of `known` (the names the MDM has); the
    /// error has the line of the first mapping that names another.
    pub fn check_volumes(&self, known: &[String]) -> Result<(), MapFileError> {
        let unknown = self
            .map
            .initiators
            .iter()
            .zip(&self.volume_lines)
            .flat_map(|(ini, lines)| ini.mappings.iter().zip(lines).map(move |m| (ini, m)))
            .filter(|(_, (m, _))| !known.contains(&m.volume))
            .min_by_key(|(_, (_, line))| **line);
        match unknown {
            None => Ok(()),
            Some((ini, (m, line))) => Err(MapFileError {
                line: *line,
                message: format!(
                    "volume {} does not exist; create it (scli --add_volume) or correct the \
                     name in initiator {}'s mapping",
                    m.volume, ini.name
                ),
            }),
        }
    }
}

/// Writes a map in the file's format; `parse(&render(m))` gives `m` back for any map
/// `parse` could have produced.
pub fn render(map: &InitiatorMap) -> String {
    let mut out = String::new();
    for (i, ini) in map.initiators.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("[[initiator]]\n");
        out.push_str(&format!("name = {}\n", quote(&ini.name)));
        out.push_str(&format!("iqn = {}\n", quote(&ini.iqn)));
        match &ini.chap {
            MapChap::None => {}
            MapChap::Keep => out.push_str(&format!("chap = {}\n", quote(UNCHANGED))),
            MapChap::Set(chap) => {
                let mut fields = vec![
                    format!("username = {}", quote(&chap.username)),
                    format!("secret = {}", quote(&chap.secret)),
                ];
                if let Some((username, secret)) = &chap.mutual {
                    fields.push(format!("mutual_username = {}", quote(username)));
                    fields.push(format!("mutual_secret = {}", quote(secret)));
                }
                out.push_str(&format!("chap = {{ {} }}\n", fields.join(", ")));
            }
        }
        for m in &ini.mappings {
            out.push_str("\n[[initiator.mapping]]\n");
            out.push_str(&format!("volume = {}\n", quote(&m.volume)));
            if let Some(lun) = m.lun {
                out.push_str(&format!("lun = {lun}\n"));
            }
            out.push_str(&format!(
                "access_mode = {}\n",
                quote(initiator_rules::access_mode_name(m.access))
            ));
        }
    }
    out
}

/// A TOML string literal, escaped as needed.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The 1-based line of a byte offset (CRLF files count the same).
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

// The file as TOML gives it, with positions; `Checker` turns it into an `InitiatorMap`.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    initiator: Vec<Spanned<RawInitiator>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInitiator {
    name: Option<Spanned<String>>,
    iqn: Option<Spanned<String>>,
    chap: Option<Spanned<RawChap>>,
    #[serde(default)]
    mapping: Vec<Spanned<RawMapping>>,
}

/// `chap = "unchanged"` or `chap = { username = ..., secret = ..., ... }`.
enum RawChap {
    Word(String),
    Secrets(RawSecrets),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    username: Option<Spanned<String>>,
    secret: Option<Spanned<String>>,
    mutual_username: Option<Spanned<String>>,
    mutual_secret: Option<Spanned<String>>,
}

/// By hand rather than `#[serde(untagged)]`, which would turn a misspelt key inside the
/// table into "did not match any variant" instead of naming the key.
impl<'de> Deserialize<'de> for RawChap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ChapVisitor;
        impl<'de> Visitor<'de> for ChapVisitor {
            type Value = RawChap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "\"unchanged\" or a table { username, secret, mutual_username, mutual_secret }",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawChap, E> {
                Ok(RawChap::Word(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawChap, A::Error> {
                RawSecrets::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawChap::Secrets)
            }
        }
        d.deserialize_any(ChapVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    volume: Option<Spanned<String>>,
    lun: Option<Spanned<i64>>,
    access_mode: Option<Spanned<String>>,
}

/// Checks the content, collecting every problem so that the first by line is reported
/// whatever order the keys were written in.
struct Checker<'a> {
    text: &'a str,
    problems: Vec<MapFileError>,
}

/// An initiator seen so far, for duplicate checks.
struct Seen {
    name: String,
    line: usize,
}

impl Checker<'_> {
    fn line<T>(&self, s: &Spanned<T>) -> usize {
        line_of(self.text, s.span().start)
    }

    fn problem(&mut self, line: usize, message: String) {
        self.problems.push(MapFileError { line, message });
    }

    fn check(mut self, raw: RawFile) -> Result<MapFile, MapFileError> {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut iqns: HashMap<String, Seen> = HashMap::new();
        let mut map = InitiatorMap {
            initiators: Vec::new(),
        };
        let mut volume_lines = Vec::new();
        for raw_ini in raw.initiator {
            let header = self.line(&raw_ini);
            let ini = raw_ini.into_inner();
            let name = self.name(header, ini.name.as_ref());
            // Messages name the initiator even when its name is refused.
            let label = ini
                .name
                .as_ref()
                .map_or("(unnamed)".to_string(), |n| n.get_ref().clone());
            if let Some(name) = &name {
                if let Some(first) = names.insert(name.clone(), header) {
                    self.problem(
                        header,
                        format!(
                            "initiator name {name} is already used on line {first}; give each \
                             initiator its own name"
                        ),
                    );
                }
            }
            let iqn = self.iqn(header, &label, ini.iqn.as_ref());
            if let (Some(iqn), Some(given)) = (&iqn, &ini.iqn) {
                let line = self.line(given);
                let seen = Seen {
                    name: label.clone(),
                    line,
                };
                if let Some(first) = iqns.insert(iqn.clone(), seen) {
                    self.problem(
                        line,
                        format!(
                            "initiator {label}: iqn {iqn} is already initiator {}'s (line {}); \
                             list each host once",
                            first.name, first.line
                        ),
                    );
                }
            }
            // The CHAP username defaults to the IQN as written: copied from the host, it
            // is what the host sends when told to use its initiator name.
            let as_written = iqn
                .as_ref()
                .and(ini.iqn.as_ref())
                .map(|i| i.get_ref().trim());
            let chap = self.chap(&label, as_written, ini.chap);
            let (mappings, lines) = self.mappings(&label, ini.mapping);
            if let (Some(name), Some(iqn), Some(chap)) = (name, iqn, chap) {
                map.initiators.push(MapInitiator {
                    name,
                    iqn,
                    chap,
                    mappings,
                });
                volume_lines.push(lines);
            }
        }
        match self.problems.into_iter().min_by_key(|p| p.line) {
            Some(first) => Err(first),
            None => Ok(MapFile { map, volume_lines }),
        }
    }

    fn name(&mut self, header: usize, name: Option<&Spanned<String>>) -> Option<String> {
        let Some(name) = name else {
            self.problem(
                header,
                "this [[initiator]] has no name; add name = \"...\", the name scli and the logs \
                 show for the host"
                    .to_string(),
            );
            return None;
        };
        let text = name.get_ref();
        let reason = if text.is_empty() {
            "it is empty"
        } else if text.chars().count() > MAX_NAME {
            "it is longer than 64 characters"
        } else if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            "it contains a space or a control character"
        } else {
            return Some(text.clone());
        };
        let line = self.line(name);
        self.problem(
            line,
            format!("initiator name {text:?} is not usable: {reason}"),
        );
        None
    }

    /// The normalized IQN.
    fn iqn(&mut self, header: usize, name: &str, iqn: Option<&Spanned<String>>) -> Option<String> {
        let Some(iqn) = iqn else {
            self.problem(
                header,
                format!(
                    "initiator {name} has no iqn; add iqn = \"iqn.yyyy-mm.reversed.domain:host\", \
                     the host's iSCSI name"
                ),
            );
            return None;
        };
        match iscsi_name::normalize(iqn.get_ref()) {
            Ok(n) => Some(n),
            Err(e) => {
                let line = self.line(iqn);
                self.problem(
                    line,
                    format!(
                        "initiator {name}: {e}; give an RFC 3720 name such as \
                         iqn.1998-01.com.vmware:host"
                    ),
                );
                None
            }
        }
    }

    /// The CHAP setting; a username left out is `iqn` (`None` if the IQN is refused).
    fn chap(
        &mut self,
        name: &str,
        iqn: Option<&str>,
        chap: Option<Spanned<RawChap>>,
    ) -> Option<MapChap> {
        let Some(chap) = chap else {
            return Some(MapChap::None);
        };
        let line = self.line(&chap);
        let secrets = match chap.into_inner() {
            RawChap::Word(w) if w == UNCHANGED => return Some(MapChap::Keep),
            RawChap::Word(w) => {
                self.problem(
                    line,
                    format!(
                        "initiator {name}: chap = {w:?} is not understood; write chap = \
                         \"unchanged\" or chap = {{ username = \"...\", secret = \"...\" }}"
                    ),
                );
                return None;
            }
            RawChap::Secrets(s) => s,
        };
        let Some(secret) = secrets.secret else {
            self.problem(
                line,
                format!(
                    "initiator {name}: chap has no secret; add secret = \"...\" (12 to 255 \
                     characters), or write chap = \"unchanged\" to keep the MDM's"
                ),
            );
            return None;
        };
        let mutual = match (secrets.mutual_username, secrets.mutual_secret) {
            (None, None) => None,
            (Some(u), Some(s)) => Some((u, s)),
            (Some(given), None) | (None, Some(given)) => {
                let line = self.line(&given);
                self.problem(
                    line,
                    format!(
                        "initiator {name}: chap has only one of mutual_username and \
                         mutual_secret; give both for mutual CHAP, or neither"
                    ),
                );
                return None;
            }
        };
        // Where each setting is, for the error; a default has the line of `chap`.
        let text = self.text;
        let at = |s: Option<&Spanned<String>>| s.map_or(line, |s| line_of(text, s.span().start));
        let part_lines = [
            (ChapPart::Username, at(secrets.username.as_ref())),
            (ChapPart::Secret, at(Some(&secret))),
            (
                ChapPart::MutualUsername,
                at(mutual.as_ref().map(|(u, _)| u)),
            ),
            (ChapPart::MutualSecret, at(mutual.as_ref().map(|(_, s)| s))),
        ];
        let username = match (secrets.username, iqn) {
            (Some(u), _) => u.into_inner(),
            (None, Some(iqn)) => iqn.to_string(),
            // The IQN's own problem is reported; nothing to default to.
            (None, None) => return None,
        };
        let chap = Chap {
            username,
            secret: secret.get_ref().clone(),
            mutual: mutual
                .as_ref()
                .map(|(u, s)| (u.get_ref().clone(), s.get_ref().clone())),
        };
        match initiator_rules::check_chap(&chap) {
            Ok(()) => Some(MapChap::Set(chap)),
            Err(e) => {
                let at = part_lines
                    .iter()
                    .find(|(part, _)| *part == e.part())
                    .map_or(line, |(_, l)| *l);
                self.problem(at, format!("initiator {name}: chap {}: {e}", key(&e)));
                None
            }
        }
    }

    /// The mappings that are fine, and the line of each one's volume.
    fn mappings(
        &mut self,
        name: &str,
        raw: Vec<Spanned<RawMapping>>,
    ) -> (Vec<MapEntry>, Vec<usize>) {
        let mut volumes: HashMap<String, usize> = HashMap::new();
        let mut luns: HashMap<u64, (String, usize)> = HashMap::new();
        let mut good = (Vec::new(), Vec::new());
        for m in raw {
            let header = self.line(&m);
            let m = m.into_inner();
            let Some(volume) = m.volume else {
                self.problem(
                    header,
                    format!(
                        "initiator {name}: this [[initiator.mapping]] has no volume; add \
                         volume = \"NAME\""
                    ),
                );
                continue;
            };
            let line = self.line(&volume);
            let volume = volume.into_inner();
            if volume.is_empty() {
                self.problem(
                    line,
                    format!("initiator {name}: volume is empty; give the volume's name"),
                );
                continue;
            }
            let mut fine = true;
            if let Some(first) = volumes.insert(volume.clone(), line) {
                self.problem(
                    line,
                    format!(
                        "initiator {name}: volume {volume} is already mapped on line {first}; \
                         map a volume once per initiator"
                    ),
                );
                fine = false;
            }
            let lun = match &m.lun {
                None => None,
                Some(lun) => {
                    let at = self.line(lun);
                    match u64::try_from(*lun.get_ref()) {
                        Ok(n) if n <= MAX_LUN => {
                            if let Some((other, first)) = luns.insert(n, (volume.clone(), at)) {
                                self.problem(
                                    at,
                                    format!(
                                        "initiator {name}: LUN {n} is already volume {other}'s \
                                         (line {first}); give each mapping its own LUN"
                                    ),
                                );
                                fine = false;
                            }
                            Some(n)
                        }
                        _ => {
                            self.problem(
                                at,
                                format!(
                                    "initiator {name}, volume {volume}: lun {} is out of range; \
                                     give 0 to {MAX_LUN}, or leave it out for the lowest free",
                                    lun.get_ref()
                                ),
                            );
                            fine = false;
                            None
                        }
                    }
                }
            };
            let access = match &m.access_mode {
                None => AccessMode::ReadWrite,
                Some(given) => match initiator_rules::access_mode(given.get_ref()) {
                    Some(mode) => mode,
                    None => {
                        let at = self.line(given);
                        self.problem(
                            at,
                            format!(
                                "initiator {name}, volume {volume}: access_mode {:?} is neither \
                                 \"ReadWrite\" nor \"ReadOnly\"",
                                given.get_ref()
                            ),
                        );
                        continue;
                    }
                },
            };
            if fine {
                good.0.push(MapEntry {
                    volume,
                    lun,
                    access,
                });
                good.1.push(line);
            }
        }
        good
    }
}

/// The key inside `chap = { ... }` that an error is about.
fn key(e: &ChapError) -> &'static str {
    match e.part() {
        ChapPart::Username => "username",
        ChapPart::Secret => "secret",
        ChapPart::MutualUsername => "mutual_username",
        ChapPart::MutualSecret => "mutual_secret",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
# Two ESXi hosts.
[[initiator]]
name = "svrsan2011"
iqn = "iqn.1998-01.com.vmware:SVRSAN2011-4f2a"
chap = { username = "svrsan2011", secret = "twelve-bytes", mutual_username = "dn", mutual_secret = "another-secret" }

[[initiator.mapping]]
volume = "awsvol01"
lun = 0

[[initiator.mapping]]
volume = "awsvol02"
access_mode = "READ_ONLY"

[[initiator]]
name = "svrsan2012"
iqn = "iqn.1998-01.com.vmware:svrsan2012-77c1"
chap = "unchanged"

[[initiator]]
name = "backup1"
iqn = "eui.02004567A425678D"
chap = { secret = "twelve-bytes" }

[[initiator.mapping]]
volume = "awsvol01"
lun = 16383
access_mode = "ReadOnly"
"#;

    fn entry(volume: &str, lun: Option<u64>, access: AccessMode) -> MapEntry {
        MapEntry {
            volume: volume.into(),
            lun,
            access,
        }
    }

    fn good_map() -> InitiatorMap {
        InitiatorMap {
            initiators: vec![
                MapInitiator {
                    name: "svrsan2011".into(),
                    iqn: "iqn.1998-01.com.vmware:svrsan2011-4f2a".into(),
                    chap: MapChap::Set(Chap {
                        username: "svrsan2011".into(),
                        secret: "twelve-bytes".into(),
                        mutual: Some(("dn".into(), "another-secret".into())),
                    }),
                    mappings: vec![
                        entry("awsvol01", Some(0), AccessMode::ReadWrite),
                        entry("awsvol02", None, AccessMode::ReadOnly),
                    ],
                },
                MapInitiator {
                    name: "svrsan2012".into(),
                    iqn: "iqn.1998-01.com.vmware:svrsan2012-77c1".into(),
                    chap: MapChap::Keep,
                    mappings: vec![],
                },
                MapInitiator {
                    name: "backup1".into(),
                    iqn: "eui.02004567a425678d".into(),
                    chap: MapChap::Set(Chap {
                        username: "eui.02004567A425678D".into(),
                        secret: "twelve-bytes".into(),
                        mutual: None,
                    }),
                    mappings: vec![entry("awsvol01", Some(16383), AccessMode::ReadOnly)],
                },
            ],
        }
    }

    /// The error for `text`, as (line, message).
    fn err(text: &str) -> (usize, String) {
        let e = parse(text).unwrap_err();
        (e.line, e.message)
    }

    /// A one-initiator file with `extra` lines after its iqn.
    fn one(extra: &str) -> String {
        format!("[[initiator]]\nname = \"h1\"\niqn = \"iqn.1998-01.com.vmware:h1\"\n{extra}")
    }

    #[test]
    fn a_good_file_gives_the_map_normalized_with_defaults() {
        let file = parse(GOOD).unwrap();
        assert_eq!(file.map, good_map());
        assert_eq!(file.volume_lines, vec![vec![9, 13], vec![], vec![27]]);
    }

    #[test]
    fn empty_and_comment_only_files_are_empty_maps() {
        for text in ["", "\n\n", "# nothing yet\n", "\u{feff}"] {
            assert_eq!(parse(text).unwrap().map.initiators, vec![], "{text:?}");
        }
    }

    #[test]
    fn crlf_files_read_the_same_and_count_lines_the_same() {
        let crlf = GOOD.replace('\n', "\r\n");
        assert_eq!(parse(&crlf).unwrap(), parse(GOOD).unwrap());
        let bad = one("lun = 3\n").replace('\n', "\r\n");
        assert_eq!(err(&bad).0, 4);
    }

    #[test]
    fn render_then_parse_gives_the_map_back() {
        let map = good_map();
        let text = render(&map);
        assert_eq!(parse(&text).unwrap().map, map, "{text}");
        assert!(text.starts_with(
            "[[initiator]]\nname = \"svrsan2011\"\niqn = \"iqn.1998-01.com.vmware:svrsan2011-4f2a\"\n\
             chap = { username = \"svrsan2011\", secret = \"twelve-bytes\", mutual_username = \
             \"dn\", mutual_secret = \"another-secret\" }\n\n[[initiator.mapping]]\n\
             volume = \"awsvol01\"\nlun = 0\naccess_mode = \"ReadWrite\"\n"
        ));
        assert!(text.contains("\nchap = \"unchanged\"\n"));
        // Characters TOML must escape survive too.
        let odd = InitiatorMap {
            initiators: vec![MapInitiator {
                name: "h\"1\\".into(),
                iqn: "naa.52004567ba64678d".into(),
                chap: MapChap::Set(Chap {
                    username: "user 'x' \"y\"".into(),
                    secret: "sec\\ret\"'''abc".into(),
                    mutual: None,
                }),
                mappings: vec![entry("vol \"q\"", None, AccessMode::ReadWrite)],
            }],
        };
        assert_eq!(parse(&render(&odd)).unwrap().map, odd);
        assert_eq!(render(&InitiatorMap { initiators: vec![] }), "");
    }

    #[test]
    fn syntax_and_shape_errors_have_their_line() {
        let (line, msg) = err("[[initiator]]\nname = \"h1\n");
        assert_eq!(line, 2, "{msg}");
        let (line, msg) = err(&one("nmae = \"x\"\n"));
        assert_eq!(line, 4);
        assert!(msg.starts_with("unknown field `nmae`"), "{msg}");
        let (line, msg) = err("initiators = []\n");
        assert_eq!(line, 1);
        assert!(msg.contains("`initiators`"), "{msg}");
        let (line, msg) = err(&one("\n[[initiator.mapping]]\nvolume = \"v\"\nLUN = 1\n"));
        assert_eq!(line, 7);
        assert!(msg.contains("`LUN`"), "{msg}");
        let (line, msg) = err(&one(
            "chap = { username = \"u\", secrt = \"twelve-bytes\" }\n",
        ));
        assert_eq!(line, 4);
        assert!(msg.contains("unknown field `secrt`"), "{msg}");
        let (line, msg) = err(&one("\n[[initiator.mapping]]\nvolume = 7\n"));
        assert_eq!(line, 6);
        assert!(msg.contains("expected a string"), "{msg}");
        let (line, _) = err(&one(
            "\n[[initiator.mapping]]\nvolume = \"v\"\nlun = \"0\"\n",
        ));
        assert_eq!(line, 7);
        assert!(!err("[[initiator]]\nname = \"h1\"\n[initiator]\n")
            .1
            .contains('\n'));
    }

    #[test]
    fn missing_and_bad_names_and_iqns() {
        assert_eq!(
            err("\n[[initiator]]\niqn = \"iqn.1998-01.com.vmware:h1\"\n"),
            (
                2,
                "this [[initiator]] has no name; add name = \"...\", the name scli and the logs \
                 show for the host"
                    .to_string()
            )
        );
        assert_eq!(
            err("[[initiator]]\nname = \"h 1\"\niqn = \"iqn.1998-01.com.vmware:h1\"\n"),
            (
                2,
                "initiator name \"h 1\" is not usable: it contains a space or a control character"
                    .to_string()
            )
        );
        let (line, msg) = err("[[initiator]]\nname = \"h1\"\n");
        assert_eq!(line, 1);
        assert!(
            msg.starts_with("initiator h1 has no iqn; add iqn = "),
            "{msg}"
        );
        let (line, msg) = err("[[initiator]]\nname = \"h1\"\niqn = \"h1.example.com\"\n");
        assert_eq!(line, 3);
        assert_eq!(
            msg,
            "initiator h1: iSCSI name \"h1.example.com\" must start with iqn., eui. or naa.; \
             give an RFC 3720 name such as iqn.1998-01.com.vmware:host"
        );
    }

    #[test]
    fn duplicates_are_reported_at_the_second() {
        let twice = format!(
            "{}\n[[initiator]]\nname = \"h1\"\niqn = \"iqn.1998-01.com.vmware:h2\"\n",
            one("")
        );
        assert_eq!(
            err(&twice),
            (
                5,
                "initiator name h1 is already used on line 1; give each initiator its own name"
                    .to_string()
            )
        );
        let same_iqn = format!(
            "{}\n[[initiator]]\nname = \"h2\"\niqn = \"IQN.1998-01.com.vmware:H1\"\n",
            one("")
        );
        assert_eq!(
            err(&same_iqn),
            (
                7,
                "initiator h2: iqn iqn.1998-01.com.vmware:h1 is already initiator h1's (line 3); \
                 list each host once"
                    .to_string()
            )
        );
        let lun_twice = one("\n[[initiator.mapping]]\nvolume = \"a\"\nlun = 1\n\n\
             [[initiator.mapping]]\nvolume = \"b\"\nlun = 1\n");
        assert_eq!(
            err(&lun_twice),
            (
                11,
                "initiator h1: LUN 1 is already volume a's (line 7); give each mapping its own LUN"
                    .to_string()
            )
        );
        let volume_twice = one(
            "\n[[initiator.mapping]]\nvolume = \"a\"\n\n[[initiator.mapping]]\nvolume = \"a\"\n",
        );
        assert_eq!(
            err(&volume_twice),
            (
                9,
                "initiator h1: volume a is already mapped on line 6; map a volume once per \
                 initiator"
                    .to_string()
            )
        );
    }

    #[test]
    fn mapping_values_are_checked() {
        let m = |body: &str| one(&format!("\n[[initiator.mapping]]\n{body}"));
        assert_eq!(
            err(&m("lun = 2\n")),
            (
                5,
                "initiator h1: this [[initiator.mapping]] has no volume; add volume = \"NAME\""
                    .to_string()
            )
        );
        for bad in ["16384", "-1"] {
            assert_eq!(
                err(&m(&format!("volume = \"v\"\nlun = {bad}\n"))),
                (
                    7,
                    format!(
                        "initiator h1, volume v: lun {bad} is out of range; give 0 to 16383, or \
                         leave it out for the lowest free"
                    )
                )
            );
        }
        assert_eq!(
            err(&m("volume = \"v\"\naccess_mode = \"rw\"\n")),
            (
                7,
                "initiator h1, volume v: access_mode \"rw\" is neither \"ReadWrite\" nor \
                 \"ReadOnly\""
                    .to_string()
            )
        );
        assert_eq!(err(&m("volume = \"\"\n")).0, 6);
    }

    #[test]
    fn chap_is_checked_without_showing_secrets() {
        let cases = [
            ("chap = \"none\"\n", 4, "chap = \"none\" is not understood"),
            ("chap = { username = \"u\" }\n", 4, "chap has no secret"),
            (
                "chap = { secret = \"s3cr3\" }\n",
                4,
                "chap secret: the CHAP secret is 5 bytes long",
            ),
            (
                "chap = { username = \"\", secret = \"twelve-bytes\" }\n",
                4,
                "chap username: the CHAP username is empty",
            ),
            (
                "chap = { secret = \"twelve-bytes\", mutual_username = \"t\" }\n",
                4,
                "chap has only one of mutual_username and mutual_secret",
            ),
            (
                "chap = { secret = \"twelve-bytes\", mutual_username = \"t\", mutual_secret = \
                 \"twelve-bytes\" }\n",
                4,
                "chap mutual_secret: the mutual CHAP secret is the same as the CHAP secret",
            ),
            (
                "[initiator.chap]\nsecret = \"twelve-bytes\"\nmutual_username = \"t\"\n\
                 mutual_secret = \"s3cr3t-9b\"\n",
                7,
                "chap mutual_secret: the mutual CHAP secret is 9 bytes long",
            ),
        ];
        for (extra, line, start) in cases {
            let (got, msg) = err(&one(extra));
            assert_eq!(got, line, "{extra}: {msg}");
            assert!(
                msg.starts_with(&format!("initiator h1: {start}")),
                "{extra}: {msg}"
            );
            assert!(
                !msg.contains("twelve-bytes") && !msg.contains("s3cr3"),
                "{msg}"
            );
        }
    }

    #[test]
    fn the_first_problem_by_line_wins() {
        // Keys out of the usual order: the bad IQN (line 2) comes before the bad name.
        let text = "[[initiator]]\niqn = \"bogus\"\nname = \"a b\"\n";
        assert_eq!(err(text).0, 2);
    }

    #[test]
    fn check_volumes_names_the_first_unknown() {
        let file = parse(GOOD).unwrap();
        let known = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            file.check_volumes(&known(&["awsvol01", "awsvol02"])),
            Ok(())
        );
        assert_eq!(
            file.check_volumes(&known(&["awsvol01"])),
            Err(MapFileError {
                line: 13,
                message: "volume awsvol02 does not exist; create it (scli --add_volume) or \
                          correct the name in initiator svrsan2011's mapping"
                    .to_string()
            })
        );
        assert_eq!(
            file.check_volumes(&known(&["awsvol02"])).unwrap_err().line,
            9
        );
        assert_eq!(
            parse("").unwrap().check_volumes(&[]),
            Ok(()),
            "an empty map needs no volumes"
        );
    }

    #[test]
    fn the_shipped_file_maps_nothing_and_its_example_is_valid() {
        let shipped = include_str!("../../conf/initiators.toml");
        assert_eq!(parse(shipped).unwrap().map.initiators, vec![]);
        // The example is the commented lines written without a space after `#`.
        let example: String = shipped
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| !l.starts_with([' ', '#']) && !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        let file = parse(&example).unwrap();
        assert_eq!(file.map.initiators.len(), 2, "{example}");
        assert_eq!(file.map.initiators[0].mappings.len(), 2);
        assert_eq!(file.map.initiators[1].chap, MapChap::Keep);
    }
}

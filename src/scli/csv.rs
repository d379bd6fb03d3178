//! The ScaleIO installer CSV, for `--add_sds_from_csv`: one line per host, columns
//! named by the header (`IP, Password, Operating System, Is MDM/TB, MDM NIC, Is SDS,
//! is SDC, SDS Name, Domain, SDS Device List, SDS Pool List`), in any order.
//!
//! Every line is checked before anything is sent, because the whole file goes to the
//! MDM as one all-or-nothing batch: an admin fixes the file and runs it again, rather
//! than working out which half of a cluster got added.

use super::value::{self, ValueError};
use crate::cluster::api::{AddSds, DeviceSpec};
use std::collections::HashMap;

/// One host line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Line in the file (the header is usually line 1).
    pub line: usize,
    /// The SDS to add; `None` for a host with Is SDS = No.
    pub sds: Option<AddSds>,
}

const IP: &str = "IP";
const IS_SDS: &str = "Is SDS";
const SDS_NAME: &str = "SDS Name";
const DOMAIN: &str = "Domain";
const DEVICES: &str = "SDS Device List";
const POOLS: &str = "SDS Pool List";

/// Columns a file must have; `SDS Name` may be left out (the MDM then names the SDS).
const REQUIRED: [&str; 5] = [IP, IS_SDS, DOMAIN, DEVICES, POOLS];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error(
        "the file has no lines; it needs a header naming the columns (IP, Is SDS, SDS Name, \
         Domain, SDS Device List, SDS Pool List) and one line per host"
    )]
    Empty,
    #[error("line {0}: a quoted cell is never closed; end it with a double quote (\")")]
    Unclosed(usize),
    #[error(
        "the header (line {line}) has no {} column; the installer CSV needs IP, Is SDS, \
         Domain, SDS Device List and SDS Pool List",
        .missing.join(", ")
    )]
    MissingColumns {
        line: usize,
        missing: Vec<&'static str>,
    },
    #[error("the header (line {line}) has the column `{column}` twice")]
    DuplicateColumn { line: usize, column: String },
    #[error("line {line} has {cells} cells but the header has {columns}{}", quote_hint(*.cells, *.columns))]
    CellCount {
        line: usize,
        cells: usize,
        columns: usize,
    },
    #[error("line {line}, column `{column}` is empty; {why}")]
    EmptyCell {
        line: usize,
        column: &'static str,
        why: &'static str,
    },
    #[error("line {line}, column `{column}`: `{value}` is neither Yes nor No")]
    NotYesNo {
        line: usize,
        column: &'static str,
        value: String,
    },
    #[error("line {line}, column `{column}`: {reason}")]
    BadCell {
        line: usize,
        column: &'static str,
        reason: ValueError,
    },
    #[error(
        "line {line}, column `{column}`: `{value}` has an empty item; separate items with \
         single commas"
    )]
    EmptyItem {
        line: usize,
        column: &'static str,
        value: String,
    },
    #[error(
        "line {line}: {devices} devices in `SDS Device List` but {pools} pools in \
         `SDS Pool List`; give one pool per device, or one pool for all"
    )]
    PoolCount {
        line: usize,
        devices: usize,
        pools: usize,
    },
    #[error("line {line}: {ip} is already on line {first}; list each host once")]
    DuplicateIp {
        line: usize,
        first: usize,
        ip: String,
    },
    #[error("no line has Is SDS = Yes, so there is nothing to add")]
    NoSds,
}

fn quote_hint(cells: usize, columns: usize) -> &'static str {
    if cells > columns {
        "; quote cells that hold lists, e.g. \"/dev/sdb,/dev/sdc\""
    } else {
        ""
    }
}

/// Parses and checks the whole file.
pub fn parse(text: &str) -> Result<Vec<Row>, CsvError> {
    let mut records = records(text)?
        .into_iter()
        .filter(|(_, cells)| cells.iter().any(|c| !c.trim().is_empty()));
    let (header_line, header) = records.next().ok_or(CsvError::Empty)?;
    let columns = Columns::find(header_line, &header)?;
    let mut rows = Vec::new();
    let mut seen: HashMap<(String, Option<u16>), usize> = HashMap::new();
    for (line, cells) in records {
        if cells.len() != header.len() {
            return Err(CsvError::CellCount {
                line,
                cells: cells.len(),
                columns: header.len(),
            });
        }
        let (row, addr) = columns.row(line, &cells)?;
        if let Some(first) = seen.insert(addr.clone(), line) {
            let ip = match addr {
                (ip, Some(port)) => format!("{ip} port {port}"),
                (ip, None) => ip,
            };
            return Err(CsvError::DuplicateIp { line, first, ip });
        }
        rows.push(row);
    }
    if rows.iter().all(|r| r.sds.is_none()) {
        return Err(CsvError::NoSds);
    }
    Ok(rows)
}

/// Where each column the parser reads sits in a line.
struct Columns {
    ip: usize,
    is_sds: usize,
    name: Option<usize>,
    domain: usize,
    devices: usize,
    pools: usize,
}

impl Columns {
    fn find(line: usize, header: &[String]) -> Result<Self, CsvError> {
        let mut at: HashMap<String, usize> = HashMap::new();
        for (i, h) in header.iter().enumerate() {
            let key = h.trim().to_lowercase();
            if !key.is_empty() && at.insert(key, i).is_some() {
                return Err(CsvError::DuplicateColumn {
                    line,
                    column: h.trim().to_string(),
                });
            }
        }
        let get = |name: &str| at.get(&name.to_lowercase()).copied();
        let missing: Vec<&'static str> =
            REQUIRED.into_iter().filter(|c| get(c).is_none()).collect();
        match (get(IP), get(IS_SDS), get(DOMAIN), get(DEVICES), get(POOLS)) {
            (Some(ip), Some(is_sds), Some(domain), Some(devices), Some(pools)) => Ok(Columns {
                ip,
                is_sds,
                name: get(SDS_NAME),
                domain,
                devices,
                pools,
            }),
            _ => Err(CsvError::MissingColumns { line, missing }),
        }
    }

    /// One host line, and its address for the duplicate check.
    fn row(&self, line: usize, cells: &[String]) -> Result<(Row, (String, Option<u16>)), CsvError> {
        let cell = |i: usize| cells[i].trim();
        let required = |i: usize, column: &'static str, why: &'static str| {
            let v = cell(i);
            if v.is_empty() {
                Err(CsvError::EmptyCell { line, column, why })
            } else {
                Ok(v)
            }
        };
        let ip_cell = required(self.ip, IP, "every host needs its IP address")?;
        let (ip, port) = value::ip_port(ip_cell).map_err(|reason| CsvError::BadCell {
            line,
            column: IP,
            reason,
        })?;
        let addr = (ip.clone(), port);
        let is_sds = required(self.is_sds, IS_SDS, "write Yes or No")?;
        if !yes_no(line, IS_SDS, is_sds)? {
            return Ok((Row { line, sds: None }, addr));
        }
        let domain = required(self.domain, DOMAIN, "an SDS needs its protection domain")?;
        let devices = list(
            line,
            DEVICES,
            required(self.devices, DEVICES, "an SDS needs at least one device")?,
        )?;
        let pools = list(
            line,
            POOLS,
            required(
                self.pools,
                POOLS,
                "an SDS needs a storage pool for its devices",
            )?,
        )?;
        if pools.len() != 1 && pools.len() != devices.len() {
            return Err(CsvError::PoolCount {
                line,
                devices: devices.len(),
                pools: pools.len(),
            });
        }
        let devices = devices
            .iter()
            .enumerate()
            .map(|(i, path)| DeviceSpec {
                path: path.to_string(),
                pool: pools[if pools.len() == 1 { 0 } else { i }].to_string(),
                name: None,
            })
            .collect();
        let name = self.name.map(cell).filter(|n| !n.is_empty());
        let sds = AddSds {
            ip,
            port,
            protection_domain: domain.to_string(),
            name: name.map(String::from),
            devices,
        };
        Ok((
            Row {
                line,
                sds: Some(sds),
            },
            addr,
        ))
    }
}

fn yes_no(line: usize, column: &'static str, v: &str) -> Result<bool, CsvError> {
    match v.to_ascii_lowercase().as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(CsvError::NotYesNo {
            line,
            column,
            value: v.to_string(),
        }),
    }
}

/// The comma-separated items of a cell.
fn list<'a>(line: usize, column: &'static str, v: &'a str) -> Result<Vec<&'a str>, CsvError> {
    let items: Vec<&str> = v.split(',').map(str::trim).collect();
    if items.iter().any(|i| i.is_empty()) {
        return Err(CsvError::EmptyItem {
            line,
            column,
            value: v.to_string(),
        });
    }
    Ok(items)
}

/// Splits CSV text into records of raw cells, each with the line it starts on.
/// Cells may be double-quoted (a quote inside is doubled) and then hold commas and
/// line breaks; spaces before an opening quote are allowed, as in `IP, "a,b"`.
fn records(text: &str) -> Result<Vec<(usize, Vec<String>)>, CsvError> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut start = 1;
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut quoted_since: Option<usize> = None;
    let mut chars = text
        .strip_prefix('\u{feff}')
        .unwrap_or(text)
        .chars()
        .peekable();
    while let Some(c) = chars.next() {
        if quoted_since.is_some() {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                '"' => quoted_since = None,
                '\n' => {
                    line += 1;
                    cell.push(c);
                }
                _ => cell.push(c),
            }
            continue;
        }
        match c {
            ',' => cells.push(std::mem::take(&mut cell)),
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                cells.push(std::mem::take(&mut cell));
                out.push((start, std::mem::take(&mut cells)));
                line += 1;
                start = line;
            }
            '"' if cell.trim().is_empty() => {
                cell.clear();
                quoted_since = Some(line);
            }
            _ => cell.push(c),
        }
    }
    if let Some(opened) = quoted_since {
        return Err(CsvError::Unclosed(opened));
    }
    if !cell.is_empty() || !cells.is_empty() {
        cells.push(cell);
        out.push((start, cells));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "IP, Password, Operating System, Is MDM/TB, MDM NIC, Is SDS, is SDC, \
                          SDS Name, Domain, SDS Device List, SDS Pool List";

    fn file(lines: &[&str]) -> String {
        let mut s = HEADER.to_string();
        for l in lines {
            s.push('\n');
            s.push_str(l);
        }
        s.push('\n');
        s
    }

    fn err(lines: &[&str]) -> String {
        parse(&file(lines)).unwrap_err().to_string()
    }

    fn dev(path: &str, pool: &str) -> DeviceSpec {
        DeviceSpec {
            path: path.into(),
            pool: pool.into(),
            name: None,
        }
    }

    #[test]
    fn installer_file_with_quoted_lists_and_skipped_hosts() {
        let text = file(&[
            "10.0.0.11,pw,linux,Primary,eth0,Yes,No,aws1sds,awspdomain01,/dev/xvdf,pool03",
            "10.0.0.12,pw,linux,Secondary,eth0,no,Yes,,awspdomain01, \"/dev/xvdf,/dev/xvdg\" ,pool03",
            "",
            "10.0.0.13:7073,pw,linux,,,YES,No,aws3sds,awspdomain01,\"/dev/xvdf, /dev/xvdg\",\"p1,p2\"",
            "10.0.0.14,\"p\"\"w\",linux,,,Yes,No,,pd2,/dev/sdb,pool9",
        ]);
        let rows = parse(&text).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].line, 2);
        assert_eq!(
            rows[0].sds,
            Some(AddSds {
                ip: "10.0.0.11".into(),
                port: None,
                protection_domain: "awspdomain01".into(),
                name: Some("aws1sds".into()),
                devices: vec![dev("/dev/xvdf", "pool03")],
            })
        );
        assert_eq!(rows[1], Row { line: 3, sds: None });
        // The blank line 4 is skipped, but lines keep their numbers.
        let third = rows[2].sds.as_ref().unwrap();
        assert_eq!(rows[2].line, 5);
        assert_eq!(third.port, Some(7073));
        assert_eq!(
            third.devices,
            [dev("/dev/xvdf", "p1"), dev("/dev/xvdg", "p2")]
        );
        let fourth = rows[3].sds.as_ref().unwrap();
        assert_eq!(fourth.name, None);
        assert_eq!(fourth.devices, [dev("/dev/sdb", "pool9")]);
    }

    #[test]
    fn one_pool_for_all_devices_any_column_order_crlf_and_bom() {
        let text = "\u{feff}sds pool list,DOMAIN,ip,Is SDS,SDS Device List\r\n\
                    p1,pd,10.0.0.11,Yes,\"/dev/a,/dev/b,/dev/c\"\r\n";
        let rows = parse(text).unwrap();
        let sds = rows[0].sds.as_ref().unwrap();
        assert_eq!(sds.name, None);
        assert_eq!(
            sds.devices,
            [
                dev("/dev/a", "p1"),
                dev("/dev/b", "p1"),
                dev("/dev/c", "p1")
            ]
        );
    }

    #[test]
    fn quoted_cells_may_span_lines_and_errors_count_physical_lines() {
        let text = file(&[
            "10.0.0.11,\"two\nlines\",linux,,,Yes,No,s1,pd,/dev/a,p",
            "10.0.0.12,pw,linux,,,Maybe,No,s2,pd,/dev/a,p",
        ]);
        assert_eq!(
            parse(&text).unwrap_err().to_string(),
            "line 4, column `Is SDS`: `Maybe` is neither Yes nor No"
        );
    }

    #[test]
    fn bad_rows_name_line_and_column() {
        let ok = "10.0.0.11,pw,linux,,,Yes,No,s1,pd,/dev/a,p";
        assert_eq!(
            err(&[ok, ",pw,linux,,,Yes,No,s2,pd,/dev/a,p"]),
            "line 3, column `IP` is empty; every host needs its IP address"
        );
        assert!(err(&["10.0.0.300,pw,linux,,,Yes,No,s2,pd,/dev/a,p"])
            .starts_with("line 2, column `IP`: `10.0.0.300` is not an IP address"));
        assert_eq!(
            err(&["10.0.0.11,pw,linux,,,Yes,No,s1,pd,,p"]),
            "line 2, column `SDS Device List` is empty; an SDS needs at least one device"
        );
        assert_eq!(
            err(&["10.0.0.11,pw,linux,,,Yes,No,s1,,/dev/a,p"]),
            "line 2, column `Domain` is empty; an SDS needs its protection domain"
        );
        assert_eq!(
            err(&["10.0.0.11,pw,linux,,,Yes,No,s1,pd,/dev/a,"]),
            "line 2, column `SDS Pool List` is empty; an SDS needs a storage pool for its devices"
        );
        assert_eq!(
            err(&["10.0.0.11,pw,linux,,,,No,s1,pd,/dev/a,p"]),
            "line 2, column `Is SDS` is empty; write Yes or No"
        );
        assert_eq!(
            err(&["10.0.0.11,pw,linux,,,Yes,No,s1,pd,\"/dev/a,/dev/b,/dev/c\",\"p1,p2\""]),
            "line 2: 3 devices in `SDS Device List` but 2 pools in `SDS Pool List`; give one pool \
             per device, or one pool for all"
        );
        assert_eq!(
            err(&["10.0.0.11,pw,linux,,,Yes,No,s1,pd,\"/dev/a,,/dev/b\",p"]),
            "line 2, column `SDS Device List`: `/dev/a,,/dev/b` has an empty item; separate items \
             with single commas"
        );
        assert_eq!(
            err(&["10.0.0.11,pw,linux,,,Yes,No,s1,pd,/dev/a,/dev/b,p"]),
            "line 2 has 12 cells but the header has 11; quote cells that hold lists, e.g. \
             \"/dev/sdb,/dev/sdc\""
        );
        assert_eq!(
            err(&["10.0.0.11,pw,linux,,,Yes,No,s1,pd,/dev/a"]),
            "line 2 has 10 cells but the header has 11"
        );
        assert_eq!(
            err(&[ok, "10.0.0.11,pw,linux,,,No,Yes,,,,"]),
            "line 3: 10.0.0.11 is already on line 2; list each host once"
        );
        assert_eq!(
            err(&["10.0.0.11,\"pw,linux,,,Yes,No,s1,pd,/dev/a,p"]),
            "line 2: a quoted cell is never closed; end it with a double quote (\")"
        );
        assert_eq!(
            err(&["10.0.0.11,pw,linux,,,No,Yes,,,,"]),
            "no line has Is SDS = Yes, so there is nothing to add"
        );
    }

    #[test]
    fn same_ip_on_other_ports_is_two_sds() {
        let rows = parse(&file(&[
            "10.0.0.11:7072,pw,linux,,,Yes,No,a,pd,/dev/a,p",
            "10.0.0.11:7073,pw,linux,,,Yes,No,b,pd,/dev/b,p",
        ]))
        .unwrap();
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn header_problems() {
        assert_eq!(parse("").unwrap_err(), CsvError::Empty);
        assert_eq!(parse("\n ,\n").unwrap_err(), CsvError::Empty);
        assert_eq!(
            parse("IP,Is SDS,SDS Name\n10.0.0.1,Yes,s\n")
                .unwrap_err()
                .to_string(),
            "the header (line 1) has no Domain, SDS Device List, SDS Pool List column; the \
             installer CSV needs IP, Is SDS, Domain, SDS Device List and SDS Pool List"
        );
        assert_eq!(
            parse("IP,ip\n").unwrap_err(),
            CsvError::DuplicateColumn {
                line: 1,
                column: "ip".into()
            }
        );
    }
}

//! `pgbackrest info --output=json`: the source of truth for what a stanza
//! holds. Only the fields pgcell uses are read; the rest may change freely.

use serde::{Deserialize, Serialize};

/// One backup of a stanza, as pgcell keeps it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Backup {
    pub label: String,
    /// `full`, `diff` or `incr`.
    pub kind: String,
    /// Unix seconds.
    pub start: i64,
    pub stop: i64,
    /// Size of the database at backup time, and what the repository stored (compressed, delta).
    pub size: u64,
    pub repo_size: u64,
    /// Consistent from this LSN on (the backup's stop LSN).
    pub lsn_stop: String,
}

/// What a stanza holds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct StanzaInfo {
    /// pgBackRest's status: 0 ok, 1 missing stanza path, 2 no valid backups, ...
    pub status_code: i64,
    pub status: String,
    pub backups: Vec<Backup>,
    /// Oldest and newest archived WAL segment names.
    pub archive_min: Option<String>,
    pub archive_max: Option<String>,
}

impl StanzaInfo {
    pub fn exists(&self) -> bool {
        // 1: missing stanza path; 3: missing stanza data.
        !matches!(self.status_code, 1 | 3)
    }

    pub fn repo_size(&self) -> u64 {
        self.backups.iter().map(|b| b.repo_size).sum()
    }

    pub fn last_full(&self) -> Option<&Backup> {
        self.backups.iter().rev().find(|b| b.kind == "full")
    }
}

#[derive(Deserialize)]
struct RawStanza {
    #[serde(default)]
    status: RawStatus,
    #[serde(default)]
    backup: Vec<RawBackup>,
    #[serde(default)]
    archive: Vec<RawArchive>,
    #[serde(default)]
    repo: Vec<RawRepo>,
}

#[derive(Deserialize)]
struct RawRepo {
    #[serde(default)]
    status: RawStatus,
}

#[derive(Deserialize, Default)]
struct RawStatus {
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct RawBackup {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: RawRange<i64>,
    #[serde(default)]
    info: RawSizes,
    #[serde(default)]
    lsn: Option<RawRange<String>>,
    #[serde(default)]
    error: Option<bool>,
}

#[derive(Deserialize, Default)]
struct RawRange<T> {
    #[allow(dead_code)]
    start: T,
    stop: T,
}

#[derive(Deserialize, Default)]
struct RawSizes {
    #[serde(default)]
    size: u64,
    #[serde(default)]
    repository: RawRepoSize,
}

#[derive(Deserialize, Default)]
struct RawRepoSize {
    #[serde(default)]
    delta: u64,
}

#[derive(Deserialize)]
struct RawArchive {
    min: Option<String>,
    max: Option<String>,
}

/// Parses the output for one stanza (`pgbackrest --stanza=<id> info --output=json`).
pub fn parse(json: &str) -> anyhow::Result<StanzaInfo> {
    let raw: Vec<serde_json::Value> = serde_json::from_str(json)?;
    let Some(first) = raw.into_iter().next() else { return Ok(StanzaInfo { status_code: 1, ..Default::default() }) };
    // Start times are needed too: read them from the raw value.
    let starts: Vec<i64> = first["backup"]
        .as_array()
        .map(|a| a.iter().map(|b| b["timestamp"]["start"].as_i64().unwrap_or_default()).collect())
        .unwrap_or_default();
    let s: RawStanza = serde_json::from_value(first)?;
    // 99 ("other"): pgBackRest could not read the repository (unreachable,
    // permission denied); it still exits 0. Not "no backups": an error.
    if s.status.code == 99 {
        let repo = s.repo.iter().map(|r| r.status.message.as_str()).collect::<Vec<_>>().join("; ");
        anyhow::bail!("pgbackrest info: {}: {repo}", s.status.message);
    }
    let backups = s
        .backup
        .into_iter()
        .zip(starts)
        .filter(|(b, _)| b.error != Some(true))
        .map(|(b, start)| Backup {
            label: b.label,
            kind: b.kind,
            start,
            stop: b.timestamp.stop,
            size: b.info.size,
            repo_size: b.info.repository.delta,
            lsn_stop: b.lsn.map(|l| l.stop).unwrap_or_default(),
        })
        .collect();
    Ok(StanzaInfo {
        status_code: s.status.code,
        status: s.status.message,
        backups,
        archive_min: s.archive.iter().filter_map(|a| a.min.clone()).min(),
        archive_max: s.archive.iter().filter_map(|a| a.max.clone()).max(),
    })
}

/// An LSN (`16/B374D848`) as a number.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format_lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// The LSN just past the end of a WAL segment file (16 MB segments).
pub fn segment_end_lsn(name: &str) -> Option<u64> {
    if name.len() < 24 || !name.bytes().take(24).all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((log << 32) + (seg + 1) * 0x100_0000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000005","min":"000000010000000000000001"}],
      "backup":[{"archive":{"start":"000000010000000000000002","stop":"000000010000000000000002"},"database":{"id":1,"repo-key":1},"error":false,
        "info":{"delta":23000000,"repository":{"delta":3000000,"size":3000000},"size":23000000},"label":"20261201-140000F",
        "lsn":{"start":"0/2000028","stop":"0/2000138"},"prior":null,"reference":null,"timestamp":{"start":1796133600,"stop":1796133605},"type":"full"},
        {"error":false,"info":{"delta":100,"repository":{"delta":50,"size":3000050},"size":23000100},"label":"20261201-140000F_20261201-150000D",
        "lsn":{"start":"0/4000028","stop":"0/4000100"},"timestamp":{"start":1796137200,"stop":1796137202},"type":"diff"}],
      "cipher":"none","name":"i1","status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;

    #[test]
    fn reads_backups_and_archive_range() {
        let i = parse(SAMPLE).unwrap();
        assert!(i.exists());
        assert_eq!(i.backups.len(), 2);
        assert_eq!(i.backups[0].kind, "full");
        assert_eq!((i.backups[0].start, i.backups[0].stop), (1796133600, 1796133605));
        assert_eq!(i.backups[1].lsn_stop, "0/4000100");
        assert_eq!(i.repo_size(), 3000050);
        assert_eq!(i.archive_max.as_deref(), Some("000000010000000000000005"));
        assert_eq!(i.last_full().unwrap().label, "20261201-140000F");
        let missing =
            parse(r#"[{"name":"x","status":{"code":1,"message":"missing stanza path"},"backup":[],"archive":[]}]"#)
                .unwrap();
        assert!(!missing.exists());
        let down = r#"[{"archive":[],"backup":[],"name":"q","repo":[{"key":1,"status":{"code":99,"message":"[PathOpenError] Permission denied"}}],"status":{"code":99,"message":"other"}}]"#;
        let err = parse(down).unwrap_err().to_string();
        assert!(err.contains("Permission denied"), "{err}");
    }

    #[test]
    fn lsns_and_segments() {
        assert_eq!(parse_lsn("0/2000138"), Some(0x2000138));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        for bad in ["", "0/", "/1", "x/1", "1/2/3", "123456789/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
        assert_eq!(segment_end_lsn("000000010000000000000005"), Some(0x600_0000));
        assert_eq!(segment_end_lsn("0000000100000001000000FF"), Some(0x2_0000_0000));
        assert_eq!(segment_end_lsn("nope"), None);
    }
}

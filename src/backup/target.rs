//! Restore targets (`{"restore": {"from", "target_time" | "target_lsn"}}`)
//! checked against what the source's stanza can honour: a target outside the
//! recoverable window is refused up front, with the window in the message,
//! instead of a restore that fails minutes later.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::state::BackupState;
use crate::pgbackrest::info::{Backup, format_lsn, parse_lsn};
use crate::pgbackrest::{RestoreSpec, Target};

/// What a provision asked for, as given (kept in the instance's spec).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lsn: Option<String>,
}

/// Checks the shape of the request (not yet the window).
pub fn parse_request(v: &serde_json::Value) -> Result<RestoreRequest, String> {
    let obj = v
        .as_object()
        .ok_or("restore must be an object: {\"from\": \"<instance id>\", \"target_time\" | \"target_lsn\"}")?;
    if let Some(k) = obj.keys().find(|k| !["from", "target_time", "target_lsn"].contains(&k.as_str())) {
        return Err(format!("unknown restore field {k:?}; known: from, target_time, target_lsn"));
    }
    let text = |k: &str| -> Result<Option<String>, String> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("restore.{k} must be a string")),
        }
    };
    let from = text("from")?.ok_or("restore.from (the instance to restore from) is required")?;
    if !crate::names::is_safe(&from) {
        return Err(format!("restore.from {from:?} is not an instance id"));
    }
    let r = RestoreRequest { from, target_time: text("target_time")?, target_lsn: text("target_lsn")? };
    if r.target_time.is_some() && r.target_lsn.is_some() {
        return Err("give restore.target_time or restore.target_lsn, not both".into());
    }
    if let Some(t) = &r.target_time {
        parse_time(t)?;
    }
    if let Some(l) = &r.target_lsn {
        parse_lsn(l).ok_or_else(|| format!("restore.target_lsn {l:?} is not an LSN like 0/3000060"))?;
    }
    Ok(r)
}

fn parse_time(t: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(t, &Rfc3339).map_err(|_| {
        format!("restore.target_time {t:?} is not an RFC 3339 time with a zone (e.g. 2026-12-01T14:00:00Z or 2026-12-01T15:00:00+01:00)")
    })
}

fn rfc3339(unix: f64) -> String {
    let nanos = (unix * 1e9) as i128;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// The window a stanza can be restored to, for messages and `pgcell backups`.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub from: f64,
    /// `None`: no commit is known archived after the first backup yet.
    pub to: Option<f64>,
    pub lsn_from: u64,
    pub lsn_to: Option<u64>,
}

impl Window {
    pub fn of(s: &BackupState) -> Option<Self> {
        let first = s.info.backups.first()?;
        let hb = s.archived_heartbeat().filter(|h| h.at > first.stop as f64);
        Some(Self {
            from: first.stop as f64,
            to: hb.map(|h| h.at),
            lsn_from: parse_lsn(&first.lsn_stop).unwrap_or_default(),
            lsn_to: hb.and_then(|h| parse_lsn(&h.lsn)),
        })
    }

    pub fn describe(&self) -> String {
        let to = self.to.map_or("(no later commit archived yet)".to_string(), rfc3339);
        let lsn_to = self.lsn_to.map_or("?".to_string(), format_lsn);
        format!("from {} to {} (LSN {} to {})", rfc3339(self.from), to, format_lsn(self.lsn_from), lsn_to)
    }
}

/// The restore that honours `req` from the source's state, or why none can.
pub fn resolve(req: &RestoreRequest, source: Option<&BackupState>) -> Result<RestoreSpec, String> {
    let from = &req.from;
    let Some(s) = source else {
        return Err(format!(
            "unknown source: instance {from:?} has no backups (no such instance, or its backups expired)"
        ));
    };
    let Some(window) = Window::of(s) else {
        return Err(format!("instance {from:?} has no backup yet; it is taken within minutes of provisioning"));
    };
    let spec = |b: &Backup, target| RestoreSpec { source: from.clone(), set: b.label.clone(), target };
    let newest_before = |ok: &dyn Fn(&Backup) -> bool| s.info.backups.iter().rev().find(|b| ok(b)).cloned();
    if let Some(t) = &req.target_time {
        let at = parse_time(t)?;
        let unix = at.unix_timestamp_nanos() as f64 / 1e9;
        if unix < window.from {
            return Err(format!(
                "restore.target_time {t} is before the first backup of {from:?}; recoverable window: {}",
                window.describe()
            ));
        }
        if window.to.is_none_or(|to| unix >= to) {
            return Err(format!(
                "restore.target_time {t} is after the last archived WAL of {from:?}; recoverable window: {}",
                window.describe()
            ));
        }
        let b = newest_before(&|b| (b.stop as f64) <= unix).ok_or("no backup before the target")?;
        return Ok(spec(&b, Target::Time(pg_time(at))));
    }
    if let Some(l) = &req.target_lsn {
        let lsn = parse_lsn(l).ok_or("bad LSN")?;
        if lsn < window.lsn_from {
            return Err(format!(
                "restore.target_lsn {l} is before the first backup of {from:?}; recoverable window: {}",
                window.describe()
            ));
        }
        if window.lsn_to.is_none_or(|to| lsn > to) {
            return Err(format!(
                "restore.target_lsn {l} is after the last archived WAL of {from:?}; recoverable window: {}",
                window.describe()
            ));
        }
        let b = newest_before(&|b| parse_lsn(&b.lsn_stop).is_some_and(|x| x <= lsn))
            .ok_or("no backup before the target")?;
        return Ok(spec(&b, Target::Lsn(format_lsn(lsn))));
    }
    let last = s.info.backups.last().ok_or("no backup")?;
    Ok(spec(last, Target::Latest))
}

/// A PostgreSQL timestamptz literal in UTC, to the microsecond.
fn pg_time(t: OffsetDateTime) -> String {
    let u = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
        u.year(),
        u8::from(u.month()),
        u.day(),
        u.hour(),
        u.minute(),
        u.second(),
        u.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::state::Heartbeat;
    use crate::pgbackrest::info::StanzaInfo;
    use serde_json::json;

    fn state() -> BackupState {
        let b = |label: &str, stop: i64, lsn: &str| Backup {
            label: label.into(),
            kind: "full".into(),
            stop,
            lsn_stop: lsn.into(),
            ..Default::default()
        };
        BackupState {
            info: StanzaInfo {
                backups: vec![b("F1", 1_800_000_000, "0/2000100"), b("F2", 1_800_000_100, "0/5000100")],
                ..Default::default()
            },
            last_archived_wal: Some("000000010000000000000007".into()),
            heartbeats: vec![Heartbeat {
                at: 1_800_000_200.5,
                lsn: "0/7000200".into(),
                walfile: "000000010000000000000007".into(),
            }],
            ..Default::default()
        }
    }

    fn req(v: serde_json::Value) -> RestoreRequest {
        parse_request(&v).unwrap()
    }

    #[test]
    fn shapes_are_checked() {
        for bad in [
            json!([]),
            json!({}),
            json!({"from": "a/b"}),
            json!({"from": "a", "x": 1}),
            json!({"from": "a", "target_time": "2027-01-15 08:00:00"}),
            json!({"from": "a", "target_time": "2027-01-15T08:00:00"}),
            json!({"from": "a", "target_lsn": "zz"}),
            json!({"from": "a", "target_lsn": "0/1", "target_time": "2027-01-15T08:00:00Z"}),
        ] {
            assert!(parse_request(&bad).is_err(), "{bad}");
        }
        let err = parse_request(&json!({"from": "a", "target_time": "2027-01-15T08:00:00"})).unwrap_err();
        assert!(err.contains("with a zone"), "{err}");
    }

    #[test]
    fn targets_pick_the_newest_backup_before_them() {
        let s = state();
        let r = resolve(&req(json!({"from": "src", "target_time": "2027-01-15T09:00:30+01:00"})), Some(&s)).unwrap();
        // 08:00:30Z = 1_800_000_030: after F1, before F2.
        assert_eq!((r.set.as_str(), r.source.as_str()), ("F1", "src"));
        assert_eq!(r.target, Target::Time("2027-01-15 08:00:30.000000+00".into()));
        let r = resolve(&req(json!({"from": "src", "target_lsn": "0/6000000"})), Some(&s)).unwrap();
        assert_eq!((r.set.as_str(), &r.target), ("F2", &Target::Lsn("0/6000000".into())));
        let r = resolve(&req(json!({"from": "src"})), Some(&s)).unwrap();
        assert_eq!((r.set.as_str(), &r.target), ("F2", &Target::Latest));
    }

    #[test]
    fn targets_outside_the_window_say_what_the_window_is() {
        let s = state();
        let early = resolve(&req(json!({"from": "src", "target_time": "2027-01-15T07:59:00Z"})), Some(&s)).unwrap_err();
        assert!(early.contains("before the first backup") && early.contains("from 2027-01-15T08:00:00Z"), "{early}");
        let late = resolve(&req(json!({"from": "src", "target_time": "2027-01-15T08:03:21Z"})), Some(&s)).unwrap_err();
        assert!(late.contains("after the last archived WAL") && late.contains("to 2027-01-15T08:03:20.5"), "{late}");
        let lsn = resolve(&req(json!({"from": "src", "target_lsn": "0/8000000"})), Some(&s)).unwrap_err();
        assert!(lsn.contains("after the last archived WAL"), "{lsn}");
        let unknown = resolve(&req(json!({"from": "nope"})), None).unwrap_err();
        assert!(unknown.contains("unknown source"), "{unknown}");
    }
}

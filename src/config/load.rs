//! Layering a TOML file and `PGCELL_*` overrides, typed by each field.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

pub fn parse_port_range(s: &str) -> anyhow::Result<(u16, u16)> {
    let parse = || -> Option<(u16, u16)> {
        let (a, b) = s.split_once('-')?;
        let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a > 0 && a <= b).then_some((a, b))
    };
    parse().with_context(|| format!("port range {s:?} is not of the form FIRST-LAST (e.g. 30000-30999)"))
}

/// Splits a comma-separated endpoint list, dropping blanks.
pub fn split_endpoints(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect()
}

/// `PGCELL_*` variables and the keys they set, in tables by section: `("", t)`
/// sets top-level keys (`backup.repo_path` reaches into a nested table), and
/// `("etcd_access", etcd_access::ENV)` puts one shared table under a section.
pub type Overrides<'a> = &'a [(&'a str, &'a [(&'a str, &'a str)])];

/// Reads the TOML file (if any), applies the environment overrides, then
/// deserializes with defaults for whatever is still missing. An override is
/// parsed by the type of its field (read from the defaults), never guessed from
/// its text: `PGCELL_API_PASSWORD=123456` is a string, `PGCELL_CAPACITY=x` an error.
pub fn load_layered<T: serde::de::DeserializeOwned + Serialize + Default>(
    path: Option<&Path>,
    overrides: Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<T> {
    let mut table = match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
            toml::from_str::<toml::Table>(&text)
                .with_context(|| format!("config file {} is not valid TOML", p.display()))?
        }
        None => toml::Table::new(),
    };
    let shape = toml::Table::try_from(T::default()).context("the default configuration is not a table")?;
    for (var, key) in overrides.iter().flat_map(|(section, vars)| {
        vars.iter().map(move |(var, key)| match *section {
            "" => (*var, key.to_string()),
            s => (*var, format!("{s}.{key}")),
        })
    }) {
        if let Some(v) = env(var) {
            // `section.key` overrides a key of a nested table (e.g. `backup.repo_path`).
            let (path, leaf) =
                key.rsplit_once('.').map_or((vec![], key.as_str()), |(p, l)| (p.split('.').collect(), l));
            let (mut dst, mut like) = (&mut table, Some(&shape));
            for part in path {
                like = like.and_then(|t| t.get(part)).and_then(toml::Value::as_table);
                let sub = dst.entry(part).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                dst =
                    sub.as_table_mut().with_context(|| format!("{var}: `{part}` in the config file is not a table"))?;
            }
            let value = typed_override(var, &v, like.and_then(|t| t.get(leaf)))?;
            dst.insert(leaf.to_string(), value);
        }
    }
    toml::Value::Table(table).try_into().context("invalid configuration (file or PGCELL_* environment)")
}

/// `text` as a value of the same type as `like` (the field's default).
fn typed_override(var: &str, text: &str, like: Option<&toml::Value>) -> anyhow::Result<toml::Value> {
    let bad = |what: &str| anyhow::anyhow!("{var}={text:?} is not {what}");
    Ok(match like {
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(text.trim().parse().map_err(|_| bad("a boolean (true or false)"))?)
        }
        Some(toml::Value::Integer(_)) => toml::Value::Integer(text.trim().parse().map_err(|_| bad("an integer"))?),
        Some(toml::Value::Float(_)) => toml::Value::Float(text.trim().parse().map_err(|_| bad("a number"))?),
        Some(toml::Value::Array(_)) => {
            toml::Value::Array(split_endpoints(text).into_iter().map(toml::Value::String).collect())
        }
        Some(toml::Value::String(_)) | None => toml::Value::String(text.to_string()),
        Some(_) => return Err(bad("settable from the environment (use the config file)")),
    })
}

//! A password or key from the configuration: read like a string where it is
//! used, shown as `<hidden>` by `Debug` so a logged config never carries it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "<empty>" } else { "<hidden>" })
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_never_shows_the_value_serde_reads_and_writes_it_as_a_string() {
        let s: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!((s.expose(), format!("{s:?}")), ("hunter2", "<hidden>".to_string()));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2\"");
        assert_eq!(format!("{:?}", Secret::default()), "<empty>");
    }
}

//! The TLS and authentication part of a member's `etcd3` section: Patroni
//! reaches a locked-down etcd with the same CA, client certificate and user
//! as its cell (paths as seen inside the container).

use serde_json::Value;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Etcd3Access {
    pub cacert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Etcd3Access {
    /// Adds the settings to a rendered configuration's `etcd3` section;
    /// nothing set leaves it as it was (plaintext, no user).
    pub fn apply(&self, v: &mut Value) {
        let etcd3 = &mut v["etcd3"];
        if self.cacert.is_some() {
            etcd3["protocol"] = "https".into();
        }
        for (field, value) in [
            ("cacert", &self.cacert),
            ("cert", &self.cert),
            ("key", &self.key),
            ("username", &self.username),
            ("password", &self.password),
        ] {
            if let Some(value) = value {
                etcd3[field] = value.as_str().into();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tls_and_user_land_in_the_etcd3_section_only_when_set() {
        let mut v = json!({"etcd3": {"hosts": ["a:2379"], "use_proxies": false}});
        Etcd3Access::default().apply(&mut v);
        assert_eq!(v, json!({"etcd3": {"hosts": ["a:2379"], "use_proxies": false}}));
        let access = Etcd3Access {
            cacert: Some("/var/lib/pgcell/etcd/ca.pem".into()),
            cert: Some("/var/lib/pgcell/etcd/cert.pem".into()),
            key: Some("/var/lib/pgcell/etcd/key.pem".into()),
            username: Some("pgcell-cell-a".into()),
            password: Some("pw".into()),
        };
        access.apply(&mut v);
        let e = &v["etcd3"];
        assert_eq!(
            (e["protocol"].as_str(), e["cacert"].as_str()),
            (Some("https"), Some("/var/lib/pgcell/etcd/ca.pem"))
        );
        assert_eq!((e["username"].as_str(), e["password"].as_str()), (Some("pgcell-cell-a"), Some("pw")));
        assert_eq!(
            (e["cert"].as_str(), e["key"].as_str(), e["hosts"][0].as_str()),
            (Some("/var/lib/pgcell/etcd/cert.pem"), Some("/var/lib/pgcell/etcd/key.pem"), Some("a:2379"))
        );
        let mut plain = json!({"etcd3": {}});
        Etcd3Access { username: Some("u".into()), password: Some("p".into()), ..Default::default() }.apply(&mut plain);
        assert!(plain["etcd3"].get("protocol").is_none(), "a user without TLS stays on http");
    }
}

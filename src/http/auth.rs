//! Basic auth as an extractor: a handler that takes [`Authorized`] runs only
//! for callers with the right credentials.

use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use base64::Engine;

use super::osb::OsbError;
use crate::config::Secret;
use crate::secret::constant_time_eq;

/// The credentials an HTTP server accepts (Debug hides the password).
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    /// Whether an `Authorization` header value carries these credentials.
    pub fn accepts(&self, header: &str) -> bool {
        let Some(encoded) = header.strip_prefix("Basic ").or_else(|| header.strip_prefix("basic ")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, pass)) = text.split_once(':') else {
            return false;
        };
        // Both compared, always, so timing does not tell which one was wrong.
        let user_ok = constant_time_eq(user, &self.username);
        let pass_ok = constant_time_eq(pass, self.password.expose());
        user_ok & pass_ok
    }
}

/// Proof that the request carried valid basic-auth credentials.
pub struct Authorized;

impl FromRequest for Authorized {
    type Error = OsbError;
    type Future = Ready<Result<Self, OsbError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let ok = match (req.app_data::<web::Data<Credentials>>(), req.headers().get("authorization")) {
            (Some(creds), Some(h)) => h.to_str().map(|h| creds.accepts(h)).unwrap_or(false),
            _ => false,
        };
        ready(if ok {
            Ok(Authorized)
        } else {
            Err(OsbError::new(StatusCode::UNAUTHORIZED, "basic auth required: wrong or missing credentials"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s))
    }

    #[test]
    fn basic_auth() {
        let c = Credentials { username: "containers".into(), password: "containers".into() };
        assert!(c.accepts(&basic("containers:containers")));
        assert!(!c.accepts(&basic("containers:wrong")));
        assert!(!c.accepts(&basic("containers")));
        assert!(!c.accepts("Bearer x"));
        assert!(!c.accepts("Basic !!!"));
        let d = Credentials { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{d:?}").contains("hunter2"), "{d:?}");
    }
}

//! Validated values. Request bodies are parsed into these once, at the edge;
//! everything behind the handlers takes the newtypes, never raw strings.

use std::fmt;

use payflow_common::error::FieldError;
use serde_json::{Map, Value};

/// Longest email accepted (RFC 5321 path limit).
pub const EMAIL_MAX_CHARS: usize = 254;
const EMAIL_LOCAL_MAX_CHARS: usize = 64;
pub const PASSWORD_MIN_CHARS: usize = 8;
/// Bounds the argon2 input and stops absurd passwords.
pub const PASSWORD_MAX_CHARS: usize = 128;
pub const NAME_MIN_CHARS: usize = 2;
pub const NAME_MAX_CHARS: usize = 100;

/// Fields a client must never set at registration: accepting them silently
/// would let an old or malicious client believe it chose its role or id.
pub const FORBIDDEN_REGISTRATION_FIELDS: &[&str] =
    &["role", "id", "userId", "user_id", "balance", "isAdmin", "is_admin", "admin", "permissions", "status"];

/// An email address, trimmed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err("is required".into());
        }
        if email.chars().count() > EMAIL_MAX_CHARS {
            return Err(format!("must be at most {EMAIL_MAX_CHARS} characters"));
        }
        let invalid = || "must be a valid email address".to_string();
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        if !valid_local_part(local) || !valid_domain(domain) {
            return Err(invalid());
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For values read back from the database, which only ever holds parsed emails.
    pub(crate) fn from_trusted(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Dot-atom local part (RFC 5322 without quoted strings, which no real client sends).
fn valid_local_part(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+/=?^_`{|}~-";
    !local.is_empty()
        && local.len() <= EMAIL_LOCAL_MAX_CHARS
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || SPECIALS.contains(c))
}

/// A DNS host name with at least two labels and an alphabetic top-level label.
fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()))
}

/// A password that meets the registration rules. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Not trimmed: every character the user typed counts.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.chars().count();
        if len < PASSWORD_MIN_CHARS {
            return Err(format!("must be at least {PASSWORD_MIN_CHARS} characters"));
        }
        if len > PASSWORD_MAX_CHARS {
            return Err(format!("must be at most {PASSWORD_MAX_CHARS} characters"));
        }
        let mut missing = Vec::new();
        if !raw.chars().any(char::is_lowercase) {
            missing.push("a lower-case letter");
        }
        if !raw.chars().any(char::is_uppercase) {
            missing.push("an upper-case letter");
        }
        if !raw.chars().any(|c| c.is_ascii_digit()) {
            missing.push("a digit");
        }
        if !missing.is_empty() {
            return Err(format!("must contain {}", join_and(&missing)));
        }
        Ok(Self(raw.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// A display name, trimmed, 2-100 characters, without control characters
/// (names end up in other users' payee lists and in logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim();
        let len = name.chars().count();
        if !(NAME_MIN_CHARS..=NAME_MAX_CHARS).contains(&len) {
            return Err(format!("must be between {NAME_MIN_CHARS} and {NAME_MAX_CHARS} characters"));
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_trusted(s: String) -> Self {
        Self(s)
    }
}

/// What a user may do. Only `user` is ever created through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A valid registration request.
#[derive(Debug)]
pub struct Registration {
    pub email: Email,
    pub password: Password,
    pub name: UserName,
}

impl Registration {
    /// Checks every field and reports every failure at once. Privilege fields
    /// are refused; other unknown fields are ignored (old clients send extras).
    pub fn from_json(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let email = field(body, "email", &mut errors).and_then(|s| check("email", Email::parse(s), &mut errors));
        let password =
            field(body, "password", &mut errors).and_then(|s| check("password", Password::parse(s), &mut errors));
        let name = field(body, "name", &mut errors).and_then(|s| check("name", UserName::parse(s), &mut errors));
        for key in FORBIDDEN_REGISTRATION_FIELDS {
            if body.contains_key(*key) {
                errors.push(FieldError::new(*key, "must not be set by the client"));
            }
        }
        match (email, password, name) {
            (Some(email), Some(password), Some(name)) if errors.is_empty() => Ok(Self { email, password, name }),
            _ => Err(errors),
        }
    }
}

/// A login request. The email is only normalised (trimmed, lower-cased), not
/// validated: login just looks it up, and an address that could not be
/// registered today is simply an unknown email. Passwords are not checked
/// against the registration rules either (older ones may predate them).
#[derive(Debug)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

impl LoginRequest {
    pub fn from_json(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let email = field(body, "email", &mut errors).map(|s| s.trim().to_lowercase());
        let password = field(body, "password", &mut errors).map(str::to_string);
        match (email, password) {
            (Some(email), Some(password)) if errors.is_empty() => Ok(Self { email, password }),
            _ => Err(errors),
        }
    }

    /// Whether the email could name an account at all. Longer or
    /// control-character emails are answered like unknown ones without a
    /// throttle record, which keeps the throttle table's keys bounded.
    pub fn email_is_plausible(&self) -> bool {
        self.email.chars().count() <= EMAIL_MAX_CHARS && !self.email.chars().any(char::is_control)
    }
}

/// A required, non-empty string field; records a detail otherwise.
pub fn field<'a>(body: &'a Map<String, Value>, name: &str, errors: &mut Vec<FieldError>) -> Option<&'a str> {
    match body.get(name) {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(name, "is required"));
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors.push(FieldError::new(name, "is required"));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(FieldError::new(name, "must be a string"));
            None
        }
    }
}

fn check<T>(name: &str, parsed: Result<T, String>, errors: &mut Vec<FieldError>) -> Option<T> {
    parsed.map_err(|msg| errors.push(FieldError::new(name, msg))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn email_is_normalised() {
        assert_eq!(Email::parse("  Alice.Smith@Example.COM ").unwrap().as_str(), "alice.smith@example.com");
        assert_eq!(Email::parse("a+tag@sub.example.io").unwrap().as_str(), "a+tag@sub.example.io");
    }

    #[test]
    fn email_rejects_malformed_addresses() {
        for bad in [
            "",
            "   ",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@b.c",
            "a@@b.com",
            "a b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a..b@example.com",
            "a@-example.com",
            "a@example-.com",
            "a@exa_mple.com",
            "a@example..com",
            "a@example.123",
            "a@b\n.com",
            "\u{0}a@b.com",
            "é@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn email_length_limits() {
        let local = "a".repeat(64);
        assert!(Email::parse(&format!("{local}@example.com")).is_ok());
        assert!(Email::parse(&format!("{local}a@example.com")).is_err());
        let domain = format!("{}.{}.{}.{}.com", "b".repeat(63), "c".repeat(63), "d".repeat(63), "e".repeat(60));
        let long = format!("a@{domain}");
        assert!(long.len() > EMAIL_MAX_CHARS);
        assert_eq!(Email::parse(&long).unwrap_err(), "must be at most 254 characters");
    }

    #[test]
    fn password_rules() {
        assert!(Password::parse("Passw0rd").is_ok());
        assert!(Password::parse("Pässwörd1").is_ok());
        assert_eq!(Password::parse("Pa1").unwrap_err(), "must be at least 8 characters");
        assert_eq!(Password::parse("password1").unwrap_err(), "must contain an upper-case letter");
        assert_eq!(Password::parse("PASSWORD1").unwrap_err(), "must contain a lower-case letter");
        assert_eq!(Password::parse("Password").unwrap_err(), "must contain a digit");
        assert_eq!(
            Password::parse("12345678").unwrap_err(),
            "must contain a lower-case letter and an upper-case letter"
        );
        assert_eq!(
            Password::parse("--------").unwrap_err(),
            "must contain a lower-case letter, an upper-case letter and a digit"
        );
        let max = format!("Aa1{}", "x".repeat(PASSWORD_MAX_CHARS - 3));
        assert!(Password::parse(&max).is_ok());
        assert!(Password::parse(&format!("{max}x")).is_err());
    }

    #[test]
    fn password_is_not_trimmed_and_not_printed() {
        let p = Password::parse(" Passw0rd ").unwrap();
        assert_eq!(p.expose(), " Passw0rd ");
        assert_eq!(format!("{p:?}"), "Password(***)");
    }

    #[test]
    fn name_rules() {
        assert_eq!(UserName::parse("  Al  ").unwrap().as_str(), "Al");
        assert!(UserName::parse(" A ").is_err());
        assert!(UserName::parse(&"x".repeat(100)).is_ok());
        assert!(UserName::parse(&"x".repeat(101)).is_err());
        // Counted in characters, not bytes.
        assert!(UserName::parse(&"é".repeat(100)).is_ok());
        assert!(UserName::parse("Bad\u{7}name").is_err());
    }

    #[test]
    fn role_round_trip() {
        for r in [Role::User, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn registration_reports_every_failing_field() {
        let err = Registration::from_json(&obj(json!({"email":"nope","password":"short","name":"A"}))).unwrap_err();
        let paths: Vec<_> = err.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["email", "password", "name"]);

        let err = Registration::from_json(&obj(json!({}))).unwrap_err();
        assert_eq!(err.len(), 3);
        assert!(err.iter().all(|e| e.msg == "is required"));

        let err = Registration::from_json(&obj(json!({"email":1,"password":null,"name":["x"]}))).unwrap_err();
        assert_eq!(err[0].msg, "must be a string");
        assert_eq!(err[1].msg, "is required");
        assert_eq!(err[2].msg, "must be a string");
    }

    #[test]
    fn registration_refuses_privilege_fields_and_ignores_others() {
        let ok = json!({"email":"A@B.co","password":"Passw0rd!","name":" Ann ","newsletter":true,"phone":"1"});
        let reg = Registration::from_json(&obj(ok)).unwrap();
        assert_eq!(reg.email.as_str(), "a@b.co");
        assert_eq!(reg.name.as_str(), "Ann");

        let bad =
            json!({"email":"a@b.co","password":"Passw0rd!","name":"Ann","role":"admin","balance":1e6,"isAdmin":false});
        let err = Registration::from_json(&obj(bad)).unwrap_err();
        let paths: Vec<_> = err.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["role", "balance", "isAdmin"]);
    }

    #[test]
    fn login_normalises_the_email_only() {
        let req = LoginRequest::from_json(&obj(json!({"email":" A@B.co ","password":" pw "}))).unwrap();
        assert_eq!(req.email, "a@b.co");
        assert_eq!(req.password, " pw ");
        assert!(req.email_is_plausible());
        let err = LoginRequest::from_json(&obj(json!({"email":"a@b.co"}))).unwrap_err();
        assert_eq!(err, vec![FieldError::new("password", "is required")]);
        let long = LoginRequest::from_json(&obj(json!({"email":"a".repeat(255),"password":"x"}))).unwrap();
        assert!(!long.email_is_plausible());
        let ctl = LoginRequest::from_json(&obj(json!({"email":"a\u{0}@b.co","password":"x"}))).unwrap();
        assert!(!ctl.email_is_plausible());
    }
}

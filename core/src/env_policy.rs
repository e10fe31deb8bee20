//! Which environment variables of the server a definition may use.
//!
//! The server's environment holds the DBA's secrets. A superuser may send
//! any variable to a webhook; everyone else only those named in
//! `webhooks.allowed_env_vars`: a list of names (`HOOK_TOKEN`) and prefixes
//! (`HOOK_*`), separated by commas or spaces, empty by default. A variable
//! outside the list is refused before it is looked up, so the refusal says
//! nothing about whether it exists.

use crate::error::{ApiError, SqlState};

/// The variables one caller (or one trigger's owner) may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPolicy {
    /// None: every variable (a superuser).
    allowed: Option<Vec<Entry>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Name(String),
    Prefix(String),
}

impl EnvPolicy {
    /// Every variable: for superusers.
    pub fn unrestricted() -> EnvPolicy {
        EnvPolicy { allowed: None }
    }

    /// The policy of `webhooks.allowed_env_vars`. Entries are separated by
    /// commas or whitespace; `NAME*` is a prefix, a lone `*` allows every
    /// variable. Anything else is a name, compared exactly (names are
    /// case-sensitive); an entry that is not a valid name never matches.
    pub fn from_setting(setting: &str) -> EnvPolicy {
        let entries = setting
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_suffix('*') {
                Some(prefix) => Entry::Prefix(prefix.to_string()),
                None => Entry::Name(s.to_string()),
            })
            .collect();
        EnvPolicy { allowed: Some(entries) }
    }

    pub fn allows(&self, var: &str) -> bool {
        match &self.allowed {
            None => true,
            Some(entries) => entries.iter().any(|e| match e {
                Entry::Name(n) => n == var,
                Entry::Prefix(p) => var.starts_with(p.as_str()),
            }),
        }
    }

    /// `Ok` when `var` may be used; otherwise the error for `key`, which
    /// does not say whether the variable exists.
    pub fn check(&self, key: &str, var: &str) -> Result<(), ApiError> {
        if self.allows(var) {
            return Ok(());
        }
        Err(ApiError::new(
            SqlState::InsufficientPrivilege,
            format!(
                "invalid value for key \"{key}\": environment variable \"{var}\" is not in webhooks.allowed_env_vars"
            ),
        )
        .with_hint(format!(
            "Only superusers may use any variable of the server's environment. A superuser can allow this one by adding {var} (or a prefix such as {}*) to webhooks.allowed_env_vars in postgresql.conf and reloading.",
            var.split('_').next().unwrap_or(var)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_setting_allows_nothing() {
        let p = EnvPolicy::from_setting("");
        assert!(!p.allows("HOME") && !p.allows("PGWH_TEST_SECRET"));
        let p = EnvPolicy::from_setting(" , ");
        assert!(!p.allows("A"));
    }

    #[test]
    fn names_and_prefixes() {
        let p = EnvPolicy::from_setting("HOOK_TOKEN, SLACK_*  OTHER");
        assert!(p.allows("HOOK_TOKEN") && p.allows("OTHER"));
        assert!(p.allows("SLACK_") && p.allows("SLACK_URL"));
        assert!(!p.allows("HOOK_TOKEN2"), "a name is not a prefix");
        assert!(!p.allows("hook_token"), "names are case-sensitive");
        assert!(!p.allows("SLACK"), "the prefix includes the underscore");
        assert!(EnvPolicy::from_setting("*").allows("ANYTHING"));
    }

    #[test]
    fn superusers_are_unrestricted() {
        assert!(EnvPolicy::unrestricted().allows("PGPASSWORD"));
        assert!(EnvPolicy::unrestricted().check("webhook", "X").is_ok());
    }

    #[test]
    fn the_refusal_names_key_variable_and_setting() {
        let e = EnvPolicy::from_setting("A").check("headers[0].value_from_env", "PGPASSWORD").unwrap_err();
        assert_eq!(e.state, SqlState::InsufficientPrivilege);
        assert!(e.message.contains("\"headers[0].value_from_env\""), "{}", e.message);
        assert!(e.message.contains("\"PGPASSWORD\""), "{}", e.message);
        assert!(e.message.contains("webhooks.allowed_env_vars"), "{}", e.message);
        assert!(!e.message.contains("not set"), "must not tell whether it exists: {}", e.message);
    }
}

//! `{{ENV_VAR}}` templates in webhook URLs, resolved from the server's
//! environment when a request is made. Only the template is ever stored.

use crate::error::{ApiError, ApiResult};

/// Looks up an environment variable of the server.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// `[A-Za-z_][A-Za-z0-9_]*`: a portable environment variable name.
pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A template split into literal text and variable references.
#[derive(Debug, PartialEq, Eq)]
enum Part<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn split(template: &str) -> ApiResult<Vec<Part<'_>>> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            ApiError::invalid(format!(
                "\"{{{{\" at byte {} is not closed by \"}}}}\"",
                template.len() - rest.len() + start
            ))
        })?;
        let name = after[..end].trim();
        if !is_env_name(name) {
            return Err(ApiError::invalid(format!("{{{{{}}}}} does not name an environment variable", &after[..end])));
        }
        parts.push(Part::Var(name));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

/// The variables a template refers to.
pub fn variables(template: &str) -> Vec<String> {
    split(template)
        .map(|parts| {
            parts
                .into_iter()
                .filter_map(|p| match p {
                    Part::Var(v) => Some(v.to_string()),
                    Part::Text(_) => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Replaces every `{{VAR}}` with the variable's value; a missing variable is
/// an error naming it.
pub fn render(template: &str, env: EnvLookup) -> ApiResult<String> {
    render_with(template, &|v| {
        env(v).ok_or_else(|| {
            ApiError::invalid(format!("environment variable \"{v}\" is not set in the PostgreSQL server's environment"))
                .with_hint(format!("Set {v} in the environment of the postmaster and restart it."))
        })
    })
}

/// Like [`render`], with `get` deciding each variable's value or error (a
/// variable the caller may not use, one that is not set).
pub fn render_with(template: &str, get: &dyn Fn(&str) -> ApiResult<String>) -> ApiResult<String> {
    let mut out = String::with_capacity(template.len());
    for part in split(template).map_err(|e| e.within("key \"webhook\""))? {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Var(v) => out.push_str(&get(v)?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        match n {
            "HOST" => Some("h.example".into()),
            "TOKEN" => Some("abc".into()),
            _ => None,
        }
    }

    #[test]
    fn renders_variables() {
        assert_eq!(render("https://{{HOST}}/x?t={{ TOKEN }}", &env).unwrap(), "https://h.example/x?t=abc");
        assert_eq!(render("plain", &env).unwrap(), "plain");
        assert_eq!(variables("{{HOST}}/{{TOKEN}}"), vec!["HOST", "TOKEN"]);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = render("http://{{MISSING}}/", &env).unwrap_err();
        assert!(e.message.contains("\"MISSING\" is not set"), "{}", e.message);
        assert!(render("http://{{HOST/", &env).unwrap_err().message.contains("not closed"));
        assert!(render("http://{{a b}}/", &env).unwrap_err().message.contains("does not name"));
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("A_1") && is_env_name("_x"));
        assert!(!is_env_name("1A") && !is_env_name("") && !is_env_name("A-B"));
    }
}

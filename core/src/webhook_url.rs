//! Webhook URLs as they are sent and as they are logged.
//!
//! A URL is sent in the form the WHATWG URL standard gives it (what
//! browsers and curl send): `"`, spaces, `<`, `>` and the like are
//! percent-encoded, the host is lower-cased (and punycoded), and the
//! fragment, never part of a request, is dropped. What is accepted at
//! creation is checked in that form, so it can be sent. A password in the
//! URL's userinfo is used for Basic authentication but never logged.

/// The URL as it goes on the wire, or why it cannot go.
pub fn normalize(url: &str) -> Result<String, String> {
    if let Some(c) = url.chars().find(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
        return Err(format!("contains the character {} (whitespace or a control character)", describe_char(c)));
    }
    let mut parsed = url::Url::parse(url).map_err(|e| format!("is not a valid URL ({e})"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err("must use http:// or https://".into());
    }
    if parsed.host_str().is_none_or(|h| h.is_empty()) {
        return Err("has no host".into());
    }
    parsed.set_fragment(None);
    let normalized = parsed.to_string();
    // What the HTTP client will parse: anything it refuses fails here,
    // not at every attempt.
    if let Err(e) = normalized.parse::<http::Uri>() {
        return Err(format!("cannot be sent as an HTTP request target ({e})"));
    }
    Ok(normalized)
}

/// `U+0007` for a control character, `"x"` for a printable one.
pub fn describe_char(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("U+{:04X}", c as u32)
    } else {
        format!("\"{c}\"")
    }
}

/// Where the password of `url`'s userinfo is, as a byte range: after the
/// first `:` of the part between `://` and the last `@` of the authority.
/// Works on templates too (`{{VAR}}` parts are not parsed).
fn password_range(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let colon = rest[..at].find(':')?;
    Some(start + colon + 1..start + at)
}

/// The password in `url`'s userinfo, as written in the URL.
pub fn password(url: &str) -> Option<&str> {
    password_range(url).map(|r| &url[r]).filter(|p| !p.is_empty())
}

/// `url` with its userinfo password replaced by `<redacted>`, for logs.
pub fn redact_password(url: &str) -> String {
    match password_range(url) {
        Some(r) if !r.is_empty() => format!("{}<redacted>{}", &url[..r.start], &url[r.end..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_as_whatwg_does() {
        assert_eq!(
            normalize(r#"https://H.Example/x?where={"status":"paid"}#frag"#).unwrap(),
            "https://h.example/x?where={%22status%22:%22paid%22}"
        );
        assert_eq!(normalize("http://h.example/a`b/{c}").unwrap(), "http://h.example/a%60b/%7Bc%7D");
        assert_eq!(normalize("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080/");
        assert_eq!(normalize("http://h.example/ok?a=1&b=2").unwrap(), "http://h.example/ok?a=1&b=2");
    }

    #[test]
    fn refuses_what_cannot_be_sent() {
        assert!(normalize("http://h.example/a b").unwrap_err().contains("U+0020"));
        assert!(normalize("http://h.example/a\u{7}").unwrap_err().contains("U+0007"));
        assert!(normalize("http://h.example/\u{7f}").unwrap_err().contains("U+007F"));
        assert!(normalize("ftp://h.example/").unwrap_err().contains("http:// or https://"));
        assert!(normalize("not a url").is_err());
        assert!(normalize("http://").is_err());
    }

    #[test]
    fn passwords_are_found_and_redacted() {
        assert_eq!(password("http://user:s3cret@h.example/x"), Some("s3cret"));
        assert_eq!(redact_password("http://user:s3cret@h.example/x"), "http://user:<redacted>@h.example/x");
        assert_eq!(redact_password("https://u:{{PASS}}@{{HOST}}/x?a=b@c"), "https://u:<redacted>@{{HOST}}/x?a=b@c");
        assert_eq!(password("http://user@h.example/x"), None, "no password");
        assert_eq!(password("http://h.example/x?mail=a:b@c"), None, "an @ in the query is not userinfo");
        assert_eq!(redact_password("http://h.example/x"), "http://h.example/x");
        assert_eq!(password("http://u:@h/"), None);
    }
}

//! Standard Webhooks signatures (<https://www.standardwebhooks.com>).
//!
//! A secret is `whsec_` followed by the base64 of 24 to 64 random bytes;
//! a definition may hold several, separated by spaces, for rotation. Each
//! attempt is signed with every secret: `webhook-signature` carries one
//! `v1,<base64 of HMAC-SHA256>` per secret, space-separated, over
//! `{webhook-id}.{webhook-timestamp}.{body}`, exactly the bytes sent.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const PREFIX: &str = "whsec_";
/// Key sizes the specification allows.
const MIN_KEY: usize = 24;
const MAX_KEY: usize = 64;

/// The decoded keys of a value holding one or more secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys(Vec<Vec<u8>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys(<{} redacted>)", self.0.len())
    }
}

/// Parses `value`: secrets separated by whitespace, each `whsec_` and
/// base64 of 24 to 64 bytes. The error says what is wrong without
/// repeating the secret.
pub fn parse(value: &str) -> Result<Keys, String> {
    let mut keys = Vec::new();
    for (i, secret) in value.split_whitespace().enumerate() {
        let Some(b64) = secret.strip_prefix(PREFIX) else {
            return Err(format!("secret {} does not start with \"{PREFIX}\"", i + 1));
        };
        let key =
            STANDARD.decode(b64).map_err(|e| format!("secret {} is not base64 after \"{PREFIX}\" ({e})", i + 1))?;
        if !(MIN_KEY..=MAX_KEY).contains(&key.len()) {
            return Err(format!(
                "secret {} decodes to {} bytes; the specification wants {MIN_KEY} to {MAX_KEY}",
                i + 1,
                key.len()
            ));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("no secret given".into());
    }
    Ok(Keys(keys))
}

/// The `webhook-signature` header value for one attempt.
pub fn sign(keys: &Keys, id: &str, timestamp: u64, body: &str) -> String {
    keys.0
        .iter()
        .map(|key| {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body.as_bytes());
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A fresh secret: 32 bytes from the operating system's cryptographic
/// source.
pub fn generate() -> Result<String, String> {
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).map_err(|e| format!("no randomness from the operating system: {e}"))?;
    Ok(format!("{PREFIX}{}", STANDARD.encode(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_or_several_secrets() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_") && a.len() == 6 + 44);
        assert_eq!(parse(&a).unwrap().0.len(), 1);
        assert_eq!(parse(&format!(" {a}  {b} ")).unwrap().0.len(), 2);
    }

    #[test]
    fn refuses_bad_secrets_without_repeating_them() {
        let short = format!("whsec_{}", STANDARD.encode([1u8; 16]));
        let long = format!("whsec_{}", STANDARD.encode([1u8; 65]));
        for (bad, why) in [
            ("", "no secret"),
            ("sk_live_abc", "does not start with \"whsec_\""),
            ("whsec_not*base64", "is not base64"),
            (short.as_str(), "decodes to 16 bytes"),
            (long.as_str(), "decodes to 65 bytes"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(bad.is_empty() || !e.contains(bad), "the error repeats the secret: {e}");
        }
        let good = generate().unwrap();
        assert!(parse(&format!("{good} nope")).unwrap_err().contains("secret 2"));
    }

    #[test]
    fn signatures_verify_with_the_specifications_library() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        let keys = parse(&format!("{a} {b}")).unwrap();
        let body = r#"{"id":"x","event":{"op":"INSERT"}}"#;
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let sig = sign(&keys, "msg_1", ts, body);
        assert_eq!(sig.split(' ').count(), 2);
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        headers.insert("webhook-signature", sig.parse().unwrap());
        for secret in [&a, &b] {
            let wh = standardwebhooks::Webhook::new(secret).unwrap();
            wh.verify(body.as_bytes(), &headers).expect("verifies with each secret");
            assert!(wh.verify(b"tampered", &headers).is_err());
        }
        let other = standardwebhooks::Webhook::new(&generate().unwrap()).unwrap();
        assert!(other.verify(body.as_bytes(), &headers).is_err(), "another secret does not verify");
    }
}

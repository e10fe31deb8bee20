//! Host name resolution for the HTTP client.
//!
//! ureq resolves the host before every request, pooled connection or not,
//! and with a timeout set it does so on a new thread each time: one thread
//! created and torn down per delivery. This resolver answers IP addresses
//! at once and keeps names it resolved for a few seconds, so a steady
//! stream to one webhook resolves its host about once per [`TTL`] and
//! starts no threads in between. A failed lookup is not kept.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ureq::config::Config;

use crate::destination::NetPolicy;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a resolved name is used before it is looked up again.
pub const TTL: Duration = Duration::from_secs(5);

/// The destination policy, shared by every thread's resolver and replaced
/// on reload.
pub type SharedPolicy = Arc<RwLock<NetPolicy>>;

#[derive(Default)]
pub struct CachingResolver {
    inner: DefaultResolver,
    names: Mutex<HashMap<String, (Instant, Vec<SocketAddr>)>>,
    policy: SharedPolicy,
}

impl std::fmt::Debug for CachingResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingResolver").finish()
    }
}

impl CachingResolver {
    pub fn with_policy(policy: SharedPolicy) -> CachingResolver {
        CachingResolver { policy, ..CachingResolver::default() }
    }

    /// The addresses the policy allows, at most 16; an error naming the
    /// rule when it allows none. The connection is made to these addresses
    /// only, so what was checked is what is connected to.
    fn addrs(&self, list: &[SocketAddr]) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let policy = self.policy.read().map(|p| p.clone()).unwrap_or_default();
        let mut out = self.empty();
        let mut refused = None;
        for a in list {
            match policy.check(a.ip()) {
                Ok(()) if out.len() < 16 => out.push(*a),
                Ok(()) => {}
                Err(why) => refused = refused.or(Some(why)),
            }
        }
        if out.is_empty() {
            if let Some(why) = refused {
                return Err(ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, why)));
            }
        }
        Ok(out)
    }
}

/// The port of `uri`: explicit, or the scheme's default.
fn port(uri: &Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str() {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    })
}

impl Resolver for CachingResolver {
    fn resolve(&self, uri: &Uri, config: &Config, timeout: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(host), Some(port)) = (uri.host(), port(uri)) else {
            return self.inner.resolve(uri, config, timeout);
        };
        // An address literal (brackets around IPv6) needs no lookup.
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return self.addrs(&[SocketAddr::new(ip, port)]);
        }
        let key = format!("{host}:{port}");
        let cached = self.names.lock().unwrap().get(&key).filter(|(at, _)| at.elapsed() < TTL).map(|(_, l)| l.clone());
        if let Some(list) = cached {
            return self.addrs(&list);
        }
        let resolved = self.inner.resolve(uri, config, timeout)?;
        let list: Vec<SocketAddr> = resolved.iter().copied().collect();
        {
            let mut names = self.names.lock().unwrap();
            names.retain(|_, (at, _)| at.elapsed() < TTL);
            names.insert(key, (Instant::now(), list.clone()));
        }
        self.addrs(&list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::unversioned::transport::time::Duration as UDuration;

    fn no_timeout() -> NextTimeout {
        NextTimeout { after: UDuration::NotHappening, reason: ureq::Timeout::Global, ..NextTimeout::default() }
    }

    #[test]
    fn literals_are_answered_without_lookup() {
        let r = CachingResolver::default();
        let cfg = Config::default();
        let got = r.resolve(&"http://127.0.0.1:8080/x".parse().unwrap(), &cfg, no_timeout()).unwrap();
        assert_eq!(got.iter().copied().collect::<Vec<_>>(), vec!["127.0.0.1:8080".parse().unwrap()]);
        let got = r.resolve(&"https://[::1]/x".parse().unwrap(), &cfg, no_timeout()).unwrap();
        assert_eq!(got.iter().copied().collect::<Vec<_>>(), vec!["[::1]:443".parse().unwrap()]);
        assert!(r.names.lock().unwrap().is_empty(), "literals are not cached: there is nothing to look up");
    }

    #[test]
    fn names_are_kept_for_a_while_and_failures_are_not() {
        let r = CachingResolver::default();
        let cfg = Config::default();
        let got = r.resolve(&"http://localhost:9/".parse().unwrap(), &cfg, no_timeout()).unwrap();
        assert!(got.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        assert!(r.names.lock().unwrap().contains_key("localhost:9"));
        // A cached answer is served from the cache: poison the entry to see it.
        r.names.lock().unwrap().insert("localhost:9".into(), (Instant::now(), vec!["10.9.9.9:9".parse().unwrap()]));
        let got = r.resolve(&"http://localhost:9/".parse().unwrap(), &cfg, no_timeout()).unwrap();
        assert_eq!(got.iter().copied().collect::<Vec<_>>(), vec!["10.9.9.9:9".parse().unwrap()]);
        // ... until it expires.
        r.names
            .lock()
            .unwrap()
            .insert("localhost:9".into(), (Instant::now() - TTL, vec!["10.9.9.9:9".parse().unwrap()]));
        let got = r.resolve(&"http://localhost:9/".parse().unwrap(), &cfg, no_timeout()).unwrap();
        assert!(got.iter().all(|a| a.ip().is_loopback()));
        assert!(r.resolve(&"http://no-such-host.invalid/".parse().unwrap(), &cfg, no_timeout()).is_err());
        assert!(!r.names.lock().unwrap().contains_key("no-such-host.invalid:80"));
    }

    #[test]
    fn refused_destinations_are_never_returned() {
        let policy: SharedPolicy = Arc::default();
        let r = CachingResolver::with_policy(policy.clone());
        let cfg = Config::default();
        assert!(r.resolve(&"http://127.0.0.1:9/".parse().unwrap(), &cfg, no_timeout()).is_ok());
        *policy.write().unwrap() = NetPolicy::from_settings("", "127.0.0.0/8, ::1").0;
        for url in ["http://127.0.0.1:9/", "http://localhost:9/"] {
            let e = r.resolve(&url.parse().unwrap(), &cfg, no_timeout()).unwrap_err().to_string();
            assert!(e.contains("is refused by webhooks.deny_networks (127.0.0.0/8)"), "{url}: {e}");
        }
    }
}

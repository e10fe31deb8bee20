//! Which addresses the HTTP client may connect to, and host name lookups.
//!
//! Every address a request could go to passes the destination policy
//! (`webhooks.allow_networks` / `deny_networks`) first: a name's addresses
//! in [`CachingResolver::lookup`], whose answer is all the client connects
//! to, and an address written in the URL also in
//! [`CachingResolver::check_url`], before anything else happens. What was
//! checked is what is connected to.
//!
//! Names are looked up with the system's resolver (`getaddrinfo`, on the
//! runtime's blocking threads) and kept for [`TTL`], so that a steady stream
//! to one webhook looks its host up about once per TTL. A failed lookup is
//! not kept.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::destination::NetPolicy;

/// How long a resolved name is used before it is looked up again.
pub const TTL: Duration = Duration::from_secs(5);

/// At most this many of a name's addresses are tried.
const MAX_ADDRESSES: usize = 16;

/// The destination policy, shared by every request and replaced on reload.
pub type SharedPolicy = Arc<RwLock<NetPolicy>>;

/// Why a host gave no address to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// The policy refused every address; the rule that refused one.
    Refused(String),
    /// The name has no address (or the lookup failed).
    NotFound(String),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Refused(why) => f.write_str(why),
            ResolveError::NotFound(why) => write!(f, "host not found ({why})"),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Names looked up, with when each lookup was made.
type NameCache = HashMap<String, (Instant, Vec<IpAddr>)>;

/// The client's resolver: cheap to clone, every clone shares one cache.
#[derive(Clone, Default)]
pub struct CachingResolver {
    names: Arc<Mutex<NameCache>>,
    policy: SharedPolicy,
}

impl CachingResolver {
    pub fn with_policy(policy: SharedPolicy) -> CachingResolver {
        CachingResolver { policy, ..CachingResolver::default() }
    }

    /// The addresses the policy allows, at most [`MAX_ADDRESSES`]; an error
    /// naming the rule when it allows none.
    fn allowed(&self, list: &[IpAddr]) -> Result<Vec<IpAddr>, ResolveError> {
        let policy = self.policy.read().map(|p| p.clone()).unwrap_or_default();
        let mut out = Vec::new();
        let mut refused = None;
        for ip in list {
            match policy.check(*ip) {
                Ok(()) if out.len() < MAX_ADDRESSES => out.push(*ip),
                Ok(()) => {}
                Err(why) => refused = refused.or(Some(why)),
            }
        }
        match (out.is_empty(), refused) {
            (true, Some(why)) => Err(ResolveError::Refused(why)),
            _ => Ok(out),
        }
    }

    /// Checks a URL whose host is an address (the client connects to those
    /// without asking the resolver); names are checked when looked up.
    pub fn check_url(&self, url: &url::Url) -> Result<(), ResolveError> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        self.allowed(&[ip]).map(|_| ())
    }

    /// The allowed addresses of `host` (port 0: the client sets the URL's).
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(self.allowed(&[ip])?.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect());
        }
        let cached = self
            .names
            .lock()
            .ok()
            .and_then(|names| names.get(host).filter(|(at, _)| at.elapsed() < TTL).map(|(_, l)| l.clone()));
        let list = match cached {
            Some(list) => list,
            None => {
                let found: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
                    .await
                    .map_err(|e| ResolveError::NotFound(e.to_string()))?
                    .map(|a| a.ip())
                    .collect();
                if found.is_empty() {
                    return Err(ResolveError::NotFound("no address".into()));
                }
                if let Ok(mut names) = self.names.lock() {
                    names.retain(|_, (at, _)| at.elapsed() < TTL);
                    names.insert(host.to_string(), (Instant::now(), found.clone()));
                }
                found
            }
        };
        Ok(self.allowed(&list)?.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn names_are_kept_for_a_while_and_failures_are_not() {
        let r = CachingResolver::default();
        let got = block_on(r.lookup("localhost")).unwrap();
        assert!(!got.is_empty() && got.iter().all(|a| a.ip().is_loopback() && a.port() == 0), "{got:?}");
        assert!(r.names.lock().unwrap().contains_key("localhost"));
        // A cached answer is served from the cache: poison the entry to see it.
        let poison = vec!["10.9.9.9".parse().unwrap()];
        r.names.lock().unwrap().insert("localhost".into(), (Instant::now(), poison.clone()));
        assert_eq!(block_on(r.lookup("localhost")).unwrap(), vec!["10.9.9.9:0".parse().unwrap()]);
        // ... until it expires.
        r.names.lock().unwrap().insert("localhost".into(), (Instant::now() - TTL, poison));
        assert!(block_on(r.lookup("localhost")).unwrap().iter().all(|a| a.ip().is_loopback()));
        let e = block_on(r.lookup("no-such-host.invalid")).unwrap_err();
        assert!(matches!(e, ResolveError::NotFound(_)), "{e:?}");
        assert!(!r.names.lock().unwrap().contains_key("no-such-host.invalid"));
    }

    #[test]
    fn refused_destinations_are_never_returned() {
        let policy: SharedPolicy = Arc::default();
        let r = CachingResolver::with_policy(policy.clone());
        let literal = url::Url::parse("http://127.0.0.1:9/").unwrap();
        assert!(r.check_url(&literal).is_ok());
        *policy.write().unwrap() = NetPolicy::from_settings("", "127.0.0.0/8, ::1").0;
        let e = r.check_url(&literal).unwrap_err().to_string();
        assert!(e.contains("is refused by webhooks.deny_networks (127.0.0.0/8)"), "{e}");
        // Any spelling of an address the URL parser accepts is the address.
        let e = r.check_url(&url::Url::parse("http://2130706433:9/").unwrap()).unwrap_err().to_string();
        assert!(e.contains("127.0.0.1 is refused"), "{e}");
        let e = r.check_url(&url::Url::parse("http://[::1]:9/").unwrap()).unwrap_err().to_string();
        assert!(e.contains("is refused by webhooks.deny_networks"), "{e}");
        for host in ["localhost", "127.0.0.1"] {
            let e = block_on(r.lookup(host)).unwrap_err().to_string();
            assert!(e.contains("is refused by webhooks.deny_networks (127.0.0.0/8)"), "{host}: {e}");
        }
        // A name is checked only by lookup, never refused by check_url.
        assert!(r.check_url(&url::Url::parse("http://localhost:9/").unwrap()).is_ok());
    }
}

//! Which certificates HTTPS webhooks are checked against, and the client
//! certificate for mutual TLS.
//!
//! By default the operating system's certificate store is trusted, as curl
//! and pg_net do (on Debian the bundle `update-ca-certificates` writes,
//! `/etc/ssl/certs/ca-certificates.crt`, which includes CAs an operator
//! added). `webhooks.ca_file`, a PEM bundle, replaces it, for a private CA.
//! `webhooks.tls_client_cert` and `webhooks.tls_client_key` (PEM files)
//! give a client certificate. Only when no system bundle exists are the
//! Mozilla roots compiled into the library used.

use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Where operating systems keep their bundle of trusted CAs, in the order
/// looked at: Debian and Ubuntu, Fedora and RHEL, Alpine and others.
pub const SYSTEM_BUNDLES: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// The TLS settings, as text (empty means unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub ca_file: String,
    pub client_cert: String,
    pub client_key: String,
}

/// The client's TLS configuration, where its roots came from (for the log
/// line) and how many there are.
pub struct Loaded {
    pub config: Arc<ClientConfig>,
    pub roots: String,
    pub anchors: usize,
}

fn read(setting: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{setting} = '{path}' cannot be read: {e}"))
}

fn certificates(setting: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(&read(setting, path)?)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| format!("{setting} = '{path}' is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{setting} = '{path}' holds no certificate"));
    }
    Ok(certs)
}

/// rustls with the ring provider and its safe default protocol versions
/// (TLS 1.2 and 1.3).
fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
}

/// Loads the configuration of `s`. An error names the setting, the file and
/// what is wrong with it.
pub fn load(s: &TlsSettings) -> Result<Loaded, String> {
    let mut store = RootCertStore::empty();
    let roots = if !s.ca_file.is_empty() {
        store.add_parsable_certificates(certificates("webhooks.ca_file", &s.ca_file)?);
        if store.is_empty() {
            return Err(format!("webhooks.ca_file = '{}' holds no usable CA certificate", s.ca_file));
        }
        s.ca_file.clone()
    } else if let Some(bundle) = SYSTEM_BUNDLES.iter().find(|p| std::path::Path::new(p).exists()) {
        store.add_parsable_certificates(certificates("the system's CA bundle", bundle)?);
        bundle.to_string()
    } else {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        "the Mozilla roots compiled into pg_webhooks (no system CA bundle found)".to_string()
    };
    let anchors = store.len();
    let with_roots = builder().with_root_certificates(store);
    let config = match (s.client_cert.is_empty(), s.client_key.is_empty()) {
        (true, true) => with_roots.with_no_client_auth(),
        (false, false) => {
            let chain = certificates("webhooks.tls_client_cert", &s.client_cert)?;
            let key =
                PrivateKeyDer::from_pem_slice(&read("webhooks.tls_client_key", &s.client_key)?).map_err(
                    |e| match e {
                        pem::Error::NoItemsFound => {
                            format!("webhooks.tls_client_key = '{}' holds no private key", s.client_key)
                        }
                        e => format!("webhooks.tls_client_key = '{}' is not PEM: {e}", s.client_key),
                    },
                )?;
            with_roots.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "webhooks.tls_client_key = '{}' does not suit webhooks.tls_client_cert = '{}': {e}",
                    s.client_key, s.client_cert
                )
            })?
        }
        _ => return Err("webhooks.tls_client_cert and webhooks.tls_client_key must be set together".into()),
    };
    Ok(Loaded { config: Arc::new(config), roots, anchors })
}

/// A configuration that trusts no server: what HTTPS uses while a TLS
/// setting cannot be loaded, so that attempts fail rather than trust more
/// than the operator asked for.
pub fn trust_nothing() -> Arc<ClientConfig> {
    Arc::new(builder().with_root_certificates(RootCertStore::empty()).with_no_client_auth())
}

/// The default configuration (the system's bundle), or one that trusts
/// nothing when even that cannot be read.
pub fn default_config() -> Arc<ClientConfig> {
    load(&TlsSettings::default()).map(|l| l.config).unwrap_or_else(|_| trust_nothing())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_bundle_is_the_default() {
        let loaded = load(&TlsSettings::default()).unwrap();
        match SYSTEM_BUNDLES.iter().find(|p| std::path::Path::new(p).exists()) {
            Some(bundle) => {
                assert_eq!(loaded.roots, *bundle);
                assert!(loaded.anchors > 10, "{} roots in {bundle}", loaded.anchors);
            }
            None => assert_eq!(loaded.anchors, webpki_roots::TLS_SERVER_ROOTS.len()),
        }
    }

    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("pgwh-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = load(&TlsSettings { ca_file: "/nonexistent/ca.pem".into(), ..Default::default() }).err().unwrap();
        assert!(e.starts_with("webhooks.ca_file = '/nonexistent/ca.pem' cannot be read"), "{e}");
        let e = load(&TlsSettings { ca_file: empty.display().to_string(), ..Default::default() }).err().unwrap();
        assert!(e.contains("holds no certificate"), "{e}");
        let e = load(&TlsSettings { client_cert: "x".into(), ..Default::default() }).err().unwrap();
        assert!(e.contains("must be set together"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// HTTPS against a local rustls server whose certificates come from a CA
/// made here: trusted through `webhooks.ca_file` it delivers; untrusted,
/// expired or for another host it fails, naming the host and the reason.
#[cfg(test)]
mod https_tests {
    use super::*;
    use crate::http::{set_tls, Attempt, Client, SharedTls};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn ca() -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "pg_webhooks test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        Ca { cert: p.self_signed(&key).unwrap(), key }
    }

    /// A leaf for `names`, signed by `ca`; `expired` puts it in the past.
    fn leaf(ca: &Ca, names: &[&str], expired: bool) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut p = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        if expired {
            p.not_before = rcgen::date_time_ymd(2001, 1, 1);
            p.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
        (cert, key)
    }

    /// Serves HTTPS with `cert` on 127.0.0.1, answering 200 to each request;
    /// `want_client` requires a client certificate from `client_ca`.
    fn serve(cert: &rcgen::Certificate, key: &rcgen::KeyPair, client_ca: Option<&Ca>) -> String {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![cert.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let config = match client_ca {
            None => builder.with_no_client_auth().with_single_cert(chain, key).unwrap(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.cert.der().clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier).with_single_cert(chain, key).unwrap()
            }
        };
        let config = Arc::new(config);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://127.0.0.1:{}/hook", l.local_addr().unwrap().port());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                let mut r = BufReader::new(&mut tls);
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        let mut body = vec![0; len];
                        let _ = std::io::Read::read_exact(&mut r, &mut body);
                        let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                        let _ = tls.flush();
                        break;
                    }
                }
            }
        });
        url
    }

    fn pem_file(name: &str, pem: &str) -> String {
        let dir = std::env::temp_dir().join(format!("pgwh-https-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    }

    fn client(settings: &TlsSettings) -> Client {
        let tls = SharedTls::default();
        set_tls(&tls, load(settings).unwrap().config);
        Client::with_parts(100, Default::default(), tls)
    }

    fn send(client: &Client, url: &str) -> Result<u16, String> {
        let a = Attempt { tag: 1, url: url.into(), body: "{}".into(), ..crate::http::test_server::attempt(url, 5000) };
        let o = crate::http::test_server::send(client, &a);
        match (o.error, o.response) {
            (None, Some(r)) => Ok(r.status),
            (e, _) => Err(e.unwrap_or_default()),
        }
    }

    #[test]
    fn a_private_ca_is_trusted_through_ca_file_only() {
        let ca = ca();
        let (cert, key) = leaf(&ca, &["127.0.0.1"], false);
        let url = serve(&cert, &key, None);
        let ca_file = pem_file("ca.pem", &ca.cert.pem());
        assert_eq!(send(&client(&TlsSettings { ca_file, ..Default::default() }), &url), Ok(200));
        // The system store does not know the private CA.
        let e = send(&client(&TlsSettings::default()), &url).unwrap_err();
        assert!(e.starts_with("TLS with 127.0.0.1 failed") && e.to_lowercase().contains("unknown"), "{e}");
    }

    #[test]
    fn expired_and_wrong_host_certificates_fail_with_the_reason() {
        let ca = ca();
        let ca_file = pem_file("ca2.pem", &ca.cert.pem());
        let c = client(&TlsSettings { ca_file, ..Default::default() });
        let (cert, key) = leaf(&ca, &["127.0.0.1"], true);
        let e = send(&c, &serve(&cert, &key, None)).unwrap_err();
        assert!(e.starts_with("TLS with 127.0.0.1 failed") && e.to_lowercase().contains("expired"), "{e}");
        let (cert, key) = leaf(&ca, &["other.example"], false);
        let e = send(&c, &serve(&cert, &key, None)).unwrap_err();
        assert!(e.starts_with("TLS with 127.0.0.1 failed") && e.to_lowercase().contains("not valid for name"), "{e}");
    }

    #[test]
    fn client_certificates_for_mutual_tls() {
        let ca = ca();
        let (cert, key) = leaf(&ca, &["127.0.0.1"], false);
        let url = serve(&cert, &key, Some(&ca));
        let ca_file = pem_file("ca3.pem", &ca.cert.pem());
        let without = client(&TlsSettings { ca_file: ca_file.clone(), ..Default::default() });
        assert!(send(&without, &url).is_err(), "the server wants a client certificate");
        let (ccert, ckey) = leaf(&ca, &["pg-webhooks-client"], false);
        let with = client(&TlsSettings {
            ca_file,
            client_cert: pem_file("client.pem", &ccert.pem()),
            client_key: pem_file("client.key", &ckey.serialize_pem()),
        });
        assert_eq!(send(&with, &url), Ok(200));
    }
}

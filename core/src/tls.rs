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

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

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

/// The client's TLS configuration and where its roots came from (for the
/// log line).
pub struct Loaded {
    pub config: TlsConfig,
    pub roots: String,
}

fn read_pem(setting: &str, path: &str) -> Result<Vec<PemItem<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{setting} = '{path}' cannot be read: {e}"))?;
    ureq::tls::parse_pem(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting} = '{path}' is not PEM: {e}"))
}

fn certificates(setting: &str, path: &str) -> Result<Vec<Certificate<'static>>, String> {
    let certs: Vec<Certificate<'static>> = read_pem(setting, path)?
        .into_iter()
        .filter_map(|i| match i {
            PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("{setting} = '{path}' holds no certificate"));
    }
    Ok(certs)
}

/// Loads the configuration of `s`. An error names the setting, the file and
/// what is wrong with it.
pub fn load(s: &TlsSettings) -> Result<Loaded, String> {
    let (roots, from) = if !s.ca_file.is_empty() {
        (RootCerts::Specific(Arc::new(certificates("webhooks.ca_file", &s.ca_file)?)), s.ca_file.clone())
    } else if let Some(bundle) = SYSTEM_BUNDLES.iter().find(|p| std::path::Path::new(p).exists()) {
        (RootCerts::Specific(Arc::new(certificates("the system's CA bundle", bundle)?)), bundle.to_string())
    } else {
        (RootCerts::WebPki, "the Mozilla roots compiled into pg_webhooks (no system CA bundle found)".to_string())
    };
    let client = match (s.client_cert.is_empty(), s.client_key.is_empty()) {
        (true, true) => None,
        (false, false) => {
            let chain = certificates("webhooks.tls_client_cert", &s.client_cert)?;
            let key: PrivateKey<'static> = read_pem("webhooks.tls_client_key", &s.client_key)?
                .into_iter()
                .find_map(|i| match i {
                    PemItem::PrivateKey(k) => Some(k),
                    _ => None,
                })
                .ok_or_else(|| format!("webhooks.tls_client_key = '{}' holds no private key", s.client_key))?;
            Some(ClientCert::new_with_certs(&chain, key))
        }
        _ => return Err("webhooks.tls_client_cert and webhooks.tls_client_key must be set together".into()),
    };
    let config = TlsConfig::builder().root_certs(roots).client_cert(client).build();
    Ok(Loaded { config, roots: from })
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
                assert!(matches!(loaded.config.root_certs(), RootCerts::Specific(c) if c.len() > 10));
            }
            None => assert!(matches!(loaded.config.root_certs(), RootCerts::WebPki)),
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
    use std::time::Duration;

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
        let a =
            Attempt { tag: 1, url: url.into(), headers: vec![], body: "{}".into(), timeout: Duration::from_secs(5) };
        let o = client.send(&a);
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

//! HTTPS receivers for the TLS tests: a CA made on the spot, certificates
//! it signs (valid, expired, for another host), and a rustls server on
//! 127.0.0.1 that answers 200 and counts what it received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    pub fn new() -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "pg_webhooks test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        Ca { cert: p.self_signed(&key).unwrap(), key }
    }

    /// The CA certificate as PEM, for `webhooks.ca_file`.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names`; `expired` dates it in 2001.
    fn leaf(&self, names: &[&str], expired: bool) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut p = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        if expired {
            p.not_before = rcgen::date_time_ymd(2001, 1, 1);
            p.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        (p.signed_by(&key, &self.cert, &self.key).unwrap(), key)
    }
}

impl Default for Ca {
    fn default() -> Self {
        Ca::new()
    }
}

/// An HTTPS server on 127.0.0.1 with a certificate of `ca`.
pub struct HttpsReceiver {
    pub port: u16,
    /// Requests read to their end (handshakes that failed are not counted).
    received: Arc<AtomicUsize>,
}

impl HttpsReceiver {
    /// `names` are the certificate's subject names; `expired` puts its
    /// validity in the past.
    pub fn start(ca: &Ca, names: &[&str], expired: bool) -> HttpsReceiver {
        let (cert, key) = ca.leaf(names, expired);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        let config = Arc::new(config);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let received = Arc::new(AtomicUsize::new(0));
        let count = received.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let config = config.clone();
                let count = count.clone();
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, s);
                    loop {
                        let mut r = BufReader::new(&mut tls);
                        let mut len = 0;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        if tls
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .and_then(|_| tls.flush())
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        HttpsReceiver { port, received }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

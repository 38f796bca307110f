//! An in-process HTTPS server on one loopback address (test CA certificate from `certs.rs`),
//! answering per `Host` name what the test sets: MTA-STS policy files now, any small text
//! resource later. Runs on its own tokio runtime; stops when dropped.
//!
//! ```ignore
//! let web = HttpsServer::start(lo(30), &certs);           // certs valid for mta-sts.*.test
//! dns.add_ip("mta-sts.enforce.test", lo(30));
//! web.set("mta-sts.enforce.test", Served::text("version: STSv1\nmode: enforce\n…"));
//! web.set("mta-sts.hang.test", Served::Hang);             // accepts, never answers
//! // relay: [delivery.mta_sts] https_port = web.port()
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::certs::Certs;
use super::sink::server_tls_config;

/// What the server answers for one host name.
#[derive(Debug, Clone)]
pub enum Served {
    /// `status`, `Content-Type`, body.
    Reply(u16, String, String),
    /// Never answers (the connection stays open).
    Hang,
}

impl Served {
    /// `200 text/plain` with this body.
    pub fn text(body: &str) -> Served {
        Served::Reply(200, "text/plain".into(), body.into())
    }
}

#[derive(Default)]
struct Shared {
    served: Mutex<HashMap<String, Served>>,
    /// (host, path) of every request, in order.
    requests: Mutex<Vec<(String, String)>>,
}

pub struct HttpsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl HttpsServer {
    /// Listens on `ip`:free port with the leaf of `certs`. Unknown hosts get 404.
    pub fn start(ip: IpAddr, certs: &Certs) -> HttpsServer {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls_config(&certs.cert, &certs.key));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)))
            .expect("bind HTTPS");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(answer(&s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HttpsServer {
            addr,
            shared,
            rt: Some(rt),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What `host` gets from now on.
    pub fn set(&self, host: &str, served: Served) {
        self.shared
            .served
            .lock()
            .unwrap()
            .insert(host.to_ascii_lowercase(), served);
    }

    /// (host, path) of every request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// How many requests asked for `host`.
    pub fn requests_for(&self, host: &str) -> usize {
        self.requests().iter().filter(|(h, _)| h == host).count()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn answer(
    s: &Shared,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let path = req.uri().path().to_string();
    s.requests.lock().unwrap().push((host.clone(), path));
    let served = s.served.lock().unwrap().get(&host).cloned();
    let (status, ctype, body) = match served {
        Some(Served::Reply(status, ctype, body)) => (status, ctype, body),
        Some(Served::Hang) => std::future::pending().await,
        None => (404, "text/plain".into(), "not found".into()),
    };
    hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

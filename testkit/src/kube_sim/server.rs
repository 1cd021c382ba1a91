//! Serving: the TCP accept loop (plain HTTP or TLS, HTTP/1.1 and HTTP/2), the self-signed CA and
//! serving certificate, and the kubeconfig clients load.
//!
//! The serving certificate is a leaf signed by a separate CA, with SANs for `127.0.0.1`, `::1`
//! and `localhost`: rustls/webpki (kube-rs) rejects a CA certificate used as a server
//! certificate, and Go (kubectl) requires SANs. Shutdown aborts every connection, including
//! open watches, which would otherwise keep a graceful shutdown waiting forever.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::Error;

/// The CA (PEM, for clients) and the TLS acceptor presenting a leaf it signed.
pub(crate) struct Tls {
    pub ca_pem: String,
    pub acceptor: TlsAcceptor,
}

fn cert_error(source: impl std::fmt::Display) -> Error {
    Error::Certificate {
        reason: source.to_string(),
    }
}

pub(crate) fn make_tls() -> Result<Tls, Error> {
    let ca_key = KeyPair::generate().map_err(cert_error)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kube-sim-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_error)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().map_err(cert_error)?;
    let sans = vec![
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "localhost".to_string(),
    ];
    let mut leaf_params = CertificateParams::new(sans).map_err(cert_error)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(cert_error)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca_cert.der().clone()];
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(cert_error)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(cert_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Tls {
        ca_pem: ca_cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}

/// Writes a kubeconfig for `url` (and the CA next to it as `<stem>-ca.crt` when TLS is on).
pub(crate) fn write_kubeconfig(
    path: &Path,
    url: &str,
    ca_pem: Option<&str>,
    token: Option<&str>,
) -> Result<(), Error> {
    let io = |source| Error::Kubeconfig {
        path: path.to_path_buf(),
        source,
    };
    let mut cluster = json!({"server": url});
    if let Some(ca) = ca_pem {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("kubeconfig");
        let ca_path = path.with_file_name(format!("{stem}-ca.crt"));
        std::fs::write(&ca_path, ca).map_err(|source| Error::Kubeconfig {
            path: ca_path.clone(),
            source,
        })?;
        let ca_data = serde_json::to_value(k8s_openapi::ByteString(ca.as_bytes().to_vec()))
            .unwrap_or_default();
        cluster["certificate-authority-data"] = ca_data;
    }
    let user = match token {
        Some(token) => json!({"token": token}),
        None => json!({}),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kube-sim", "cluster": cluster}],
        "users": [{"name": "kube-sim", "user": user}],
        "contexts": [{"name": "kube-sim", "context": {"cluster": "kube-sim", "user": "kube-sim", "namespace": "default"}}],
        "current-context": "kube-sim",
        "preferences": {},
    });
    let yaml = serde_yaml::to_string(&config).map_err(|e| io(std::io::Error::other(e)))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, yaml).map_err(io)
}

/// Accepts connections until `shutdown` turns true, then drops every connection.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        connections.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Err(error) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
}

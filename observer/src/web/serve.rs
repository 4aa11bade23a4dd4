//! Serving the endpoints under a web configuration: TLS per connection with the configuration
//! in force at its handshake, then basic auth, the rate limit and the configured headers on
//! every request.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::WebConfig;

/// A client that has not finished its TLS handshake or sent its request headers by then is
/// dropped: a connection that never speaks holds no task for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Wraps the router's endpoints in basic auth, the rate limit and the headers.
pub fn guarded(router: Router, web: Arc<WebConfig>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(web, guard))
}

async fn guard(State(web): State<Arc<WebConfig>>, req: Request, next: Next) -> Response {
    let settings = web.current();
    let mut response = admitted(&web, &settings, req, next).await;
    // On every answer, refusals included, as the toolkit does (HSTS on a 401 too).
    for (name, value) in &settings.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// The endpoint's answer, or the refusal of the rate limit or of basic auth.
async fn admitted(
    web: &WebConfig,
    settings: &super::Settings,
    req: Request,
    next: Next,
) -> Response {
    if !web.admit(settings) {
        web.stats
            .refused_rate_limited
            .fetch_add(1, Ordering::Relaxed);
        return (StatusCode::TOO_MANY_REQUESTS, "too many requests\n").into_response();
    }
    if !settings.users.is_empty() {
        let credentials = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
            })
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .and_then(|raw| String::from_utf8(raw).ok());
        let ok = match credentials.as_deref().and_then(|c| c.split_once(':')) {
            Some((user, password)) => web.authorized(settings, user, password).await,
            None => false,
        };
        if !ok {
            web.stats
                .refused_unauthorized
                .fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic")],
                "Unauthorized\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Accepts connections for ever: TLS when the configuration in force at the connection has
/// it, plain HTTP when it does not.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, web: Arc<WebConfig>) {
    let app = guarded(app, web.clone());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A response leaves in several writes (the exposition's pieces, TLS records): without
        // this, Nagle's algorithm holds the last one for the client's delayed ACK, 40 ms a
        // scrape on a kept-alive connection (BENCHMARKS.md, "Securing the endpoints").
        let _ = tcp.set_nodelay(true);
        let (app, web) = (app.clone(), web.clone());
        tokio::spawn(async move {
            let settings = web.current();
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            let Some(tls) = settings.tls.clone() else {
                let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    web.stats.refused_handshake.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    web.stats.refused_handshake.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            if !settings.allowed_sans.is_empty() {
                let allowed = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .is_some_and(|leaf| super::has_allowed_san(leaf, &settings.allowed_sans));
                if !allowed {
                    web.stats.refused_san.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "client certificate has none of client_allowed_sans");
                    return;
                }
            }
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

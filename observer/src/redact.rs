//! URL redaction. Every URL the kernel reads is redacted here, before the daemon keeps it:
//! no raw URL is ever stored, logged, exported or sent.

/// Text that replaces a secret.
pub const REDACTED: &str = "REDACTED";

/// Query keys whose value is a secret, compared case-insensitively: exact names, then any
/// key containing one of [`SECRET_PARTS`].
const SECRET_KEYS: &[&str] = &[
    "key",
    "sig",
    "st",
    "streamid",
    "passphrase",
    "pwd",
    "pw",
    "jwt",
    "hmac",
];
const SECRET_PARTS: &[&str] = &[
    "token",
    "secret",
    "pass",
    "auth",
    "signature",
    "credential",
    "session",
    "apikey",
    "api_key",
    "access_key",
    "private",
];

fn secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    SECRET_KEYS.contains(&k.as_str()) || SECRET_PARTS.iter().any(|p| k.contains(p))
}

/// Schemes whose path after the application name is a stream key.
const STREAM_KEY_SCHEMES: &[&str] = &["rtmp", "rtmps", "rtmpe", "rtmpt", "rtmpte", "rtmpts"];

/// The URL's scheme, lowercased (`file` for a plain path).
pub fn protocol(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            scheme.to_ascii_lowercase()
        }
        _ => match url.split_once(':') {
            // FFmpeg's `file:`, `pipe:`, `concat:` prefixes.
            Some((p, _)) if p.len() > 1 && p.chars().all(|c| c.is_ascii_alphanumeric()) => {
                p.to_ascii_lowercase()
            }
            _ => "file".into(),
        },
    }
}

/// Redacts credentials (`user:password@`), secret query parameters (`token=`, `key=`,
/// `passphrase=`, ...) and RTMP stream keys.
pub fn redact(url: &str) -> String {
    let (head, fragment) = match url.split_once('#') {
        Some((h, f)) => (h, Some(f)),
        None => (url, None),
    };
    let (base, query) = match head.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (head, None),
    };
    let mut out = String::with_capacity(url.len());
    match base.split_once("://") {
        Some((scheme, rest)) => {
            out.push_str(scheme);
            out.push_str("://");
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((_, host)) => {
                    out.push_str(REDACTED);
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            if STREAM_KEY_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                // rtmp://host/app/STREAM_KEY: keep the application, hide the key.
                let mut parts = path.splitn(3, '/');
                let (_, app, key) = (parts.next(), parts.next(), parts.next());
                if let Some(app) = app {
                    out.push('/');
                    out.push_str(app);
                }
                if key.is_some_and(|k| !k.is_empty()) {
                    out.push('/');
                    out.push_str(REDACTED);
                }
            } else {
                out.push_str(path);
            }
        }
        None => out.push_str(base),
    }
    if let Some(q) = query {
        out.push('?');
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if secret_key(k) => format!("{k}={REDACTED}"),
                _ => p.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    if let Some(f) = fragment {
        // Fragments carry tokens in some players' URLs; nothing FFmpeg needs.
        if !f.is_empty() {
            out.push('#');
            out.push_str(REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_secret_parameters_are_redacted() {
        let cases = [
            (
                "rtsp://admin:hunter2@cam.local:554/live?channel=1",
                "rtsp://REDACTED@cam.local:554/live?channel=1",
            ),
            (
                "https://cdn.example/live/index.m3u8?token=abc123&quality=hd",
                "https://cdn.example/live/index.m3u8?token=REDACTED&quality=hd",
            ),
            (
                "srt://10.0.0.1:9000?mode=caller&passphrase=s3cr3tpass&streamid=#!::r=live/k",
                "srt://10.0.0.1:9000?mode=caller&passphrase=REDACTED&streamid=REDACTED#REDACTED",
            ),
            (
                "rtmp://live.example/app/sk_live_123456",
                "rtmp://live.example/app/REDACTED",
            ),
            ("rtmp://live.example/app", "rtmp://live.example/app"),
            (
                "udp://239.1.1.1:5000?pkt_size=1316&X-Amz-Signature=zz&Api_Key=q",
                "udp://239.1.1.1:5000?pkt_size=1316&X-Amz-Signature=REDACTED&Api_Key=REDACTED",
            ),
            ("/srv/media/in.mp4", "/srv/media/in.mp4"),
            ("file:/srv/a.ts", "file:/srv/a.ts"),
            ("http://u@h/p", "http://REDACTED@h/p"),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
        }
    }

    #[test]
    fn protocols() {
        assert_eq!(protocol("udp://1.2.3.4:5"), "udp");
        assert_eq!(protocol("RTP://x"), "rtp");
        assert_eq!(protocol("/a/b.mp4"), "file");
        assert_eq!(protocol("file:/a"), "file");
        assert_eq!(protocol("pipe:1"), "pipe");
        assert_eq!(protocol("C"), "file");
    }
}

/// Redacts every URL-looking token (anything with `://`, or `user:password@host`) in free
/// text, such as a log message that names its input.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, token) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        // A trailing ':' or ',' belongs to the sentence, not the URL.
        let inner = token.trim_start_matches(['\'', '"', '(']);
        let head = &token[..token.len() - inner.len()];
        let core = inner.trim_end_matches([':', ',', ';', '\'', '"', ')']);
        let tail = &inner[core.len()..];
        let credentials = core
            .split_once('@')
            .is_some_and(|(user, _)| user.contains(':') && !user.contains('/'));
        if core.contains("://") || credentials {
            out.push_str(head);
            out.push_str(&redact(core));
            out.push_str(tail);
        } else {
            out.push_str(token);
        }
    }
    out
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn urls_in_messages_are_redacted() {
        assert_eq!(
            redact_text("http://u:hunter2@h:1/x?token=abc: Connection refused"),
            "http://REDACTED@h:1/x?token=REDACTED: Connection refused"
        );
        assert_eq!(
            redact_text("Opening 'rtmp://live/app/sk_123' for writing"),
            "Opening 'rtmp://live/app/REDACTED' for writing"
        );
        assert_eq!(redact_text("no urls: a:b here"), "no urls: a:b here");
    }
}

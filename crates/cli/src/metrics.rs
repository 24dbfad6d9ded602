//! A minimal Prometheus text endpoint: answers `GET /metrics` with whatever `render` returns
//! (exposition format 0.0.4), anything else with 404. One short-lived connection at a time is
//! plenty for a scraper; each is bounded by a timeout so a silent client cannot hold it.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::debug;

/// How long one scrape may take, request and answer together.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_REQUEST: usize = 8192;

/// Serves scrapes on `listener` forever.
pub async fn serve_metrics<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    loop {
        let Ok((mut stream, addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let scrape = async {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&head);
            let ok = line.starts_with("GET /metrics ") || line.starts_with("GET /metrics?");
            let (status, body) = if ok {
                ("200 OK", render())
            } else {
                ("404 Not Found", "only GET /metrics here\n".to_owned())
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await
        };
        if let Err(err) = tokio::time::timeout(SCRAPE_TIMEOUT, scrape)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        {
            debug!(%addr, cause = %crate::one_line(&err), "metrics scrape failed");
        }
    }
}

/// Builds exposition text: one `# HELP`/`# TYPE` header per metric, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family, label values escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", parts.join(","));
        }
        let _ = writeln!(self.text, " {value}");
        self
    }

    /// The text.
    pub fn finish(self) -> String {
        self.text
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_escapes_labels() {
        let mut e = Exposition::default();
        e.family("zrep_x", "gauge", "An example.").sample(
            "zrep_x",
            &[("dataset", "a \"b\"\\c")],
            1.5,
        );
        assert_eq!(
            e.finish(),
            "# HELP zrep_x An example.\n# TYPE zrep_x gauge\nzrep_x{dataset=\"a \\\"b\\\"\\\\c\"} 1.5\n"
        );
    }

    #[tokio::test]
    async fn serves_get_metrics_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_metrics(listener, || "zrep_up 1\n".to_owned()));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nzrep_up 1\n"), "{ok}");
        assert!(get("/").await.starts_with("HTTP/1.1 404"));
    }
}

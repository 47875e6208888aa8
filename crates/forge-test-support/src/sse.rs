//! A small Server-Sent Events client for tests and benchmarks: [`SseParser`] turns bytes into
//! events, [`SseStream`] reads a live stream over HTTP and timestamps each event on arrival.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;

/// One item of an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// An event: its `event:` name (`message` when none was given) and its `data:` lines
    /// joined by newlines.
    Event { event: String, data: String },
    /// A comment line (`: ping`), without the colon and the space after it.
    Comment(String),
}

/// Incremental parser of the `text/event-stream` format.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes as they arrive; complete items are appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseItem>) {
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                let line = String::from_utf8_lossy(&line);
                self.line_done(line.trim_end_matches('\r'), out);
            } else {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self, line: &str, out: &mut Vec<SseItem>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                let event = self.event.take().unwrap_or_else(|| "message".into());
                out.push(SseItem::Event { event, data });
            }
            self.event = None;
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(SseItem::Comment(comment.trim_start().to_string()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
    }
}

/// A live event stream, read by a background task.
#[derive(Debug)]
pub struct SseStream {
    items: mpsc::UnboundedReceiver<(Instant, SseItem)>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for SseStream {
    fn drop(&mut self) {
        // Dropping the reader closes the connection.
        self.reader.abort();
    }
}

impl SseStream {
    /// Opens `url` (a `GET` with an optional bearer token) and checks that it answers with an
    /// event stream. On failure returns the status and body.
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        bearer: Option<&str>,
    ) -> Result<SseStream, (u16, String)> {
        let mut req = client.get(url);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.map_err(|e| (0, e.to_string()))?;
        let status = res.status().as_u16();
        let is_stream = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status != 200 || !is_stream {
            return Err((status, res.text().await.unwrap_or_default()));
        }
        let (tx, items) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut body = res.bytes_stream();
            let mut parser = SseParser::default();
            let mut out = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                let at = Instant::now();
                parser.feed(&chunk, &mut out);
                for item in out.drain(..) {
                    if tx.send((at, item)).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(SseStream { items, reader })
    }

    /// The next item and when it arrived; `None` when the stream ended or nothing came
    /// `within`.
    pub async fn next_item(&mut self, within: Duration) -> Option<(Instant, SseItem)> {
        tokio::time::timeout(within, self.items.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event (comments skipped) as `(name, data)`, with its arrival time. Panics
    /// naming `what` if none comes `within`.
    pub async fn next_event(&mut self, within: Duration, what: &str) -> (Instant, String, String) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await {
                Some((at, SseItem::Event { event, data })) => return (at, event, data),
                Some((_, SseItem::Comment(_))) => continue,
                None => panic!("no SSE event within {within:?} while waiting for {what}"),
            }
        }
    }

    /// Whether the server ended the stream within `within` (events still unread are skipped).
    pub async fn ended_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.items.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_comments_and_split_chunks() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.feed(b"event: session\ndata: {\"a\":1}\n\n: ping\n\nda", &mut out);
        p.feed(b"ta: x\r\ndata: y\n\n", &mut out);
        assert_eq!(
            out,
            vec![
                SseItem::Event {
                    event: "session".into(),
                    data: "{\"a\":1}".into()
                },
                SseItem::Comment("ping".into()),
                SseItem::Event {
                    event: "message".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }
}

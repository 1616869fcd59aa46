//! JSON-RPC over stdin/stdout: one message per line, one connection for the life of the
//! process. Logs never go to stdout.
//!
//! Stdin is read on an OS thread of its own with a bounded line reader: a line longer than
//! [`MAX_MESSAGE_BYTES`] is skipped without being buffered and answered with `message too
//! large`. (Reading stdin on a thread also keeps a blocked read from holding up shutdown, which
//! tokio's `stdin` would.) The end of stdin closes the connection: the calls in flight finish
//! and their responses are written, then [`serve`] returns.

use std::future::Future;
use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use threadhost_actors::ThreadHost;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::rpc::{Outgoing, ServerInfo, Session};
use crate::wire::{Frame, RpcError, MAX_MESSAGE_BYTES, PARSE_ERROR};

/// One line of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line (without its `\n` or `\r\n`).
    Text(String),
    /// A line longer than the limit; it was skipped. Holds its length in bytes.
    TooLarge(usize),
    /// A line that is not UTF-8.
    NotUtf8,
}

/// Reads one line of at most `max` bytes; `None` at the end of input. A longer line is
/// consumed to its end without being kept. `buf` is scratch space reused between calls.
pub fn read_line<R: BufRead>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Line>> {
    buf.clear();
    let mut total = 0usize;
    let mut seen_any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            if !seen_any {
                return Ok(None);
            }
            break;
        }
        seen_any = true;
        let newline = chunk.iter().position(|b| *b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        total += part.len();
        if total <= max {
            buf.extend_from_slice(part);
        } else if !buf.is_empty() {
            // Over the limit: drop what was kept and only count from now on.
            *buf = Vec::new();
        }
        let used = newline.map_or(chunk.len(), |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            break;
        }
    }
    if total > max {
        return Ok(Some(Line::TooLarge(total)));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(match String::from_utf8(std::mem::take(buf)) {
        Ok(s) => Line::Text(s),
        Err(_) => Line::NotUtf8,
    }))
}

/// Serves one connection on stdin/stdout until stdin ends, the connection is cut off, or
/// `shutdown` resolves. Calls in flight then get up to `drain` to finish.
pub async fn serve(
    host: &ThreadHost,
    info: Arc<ServerInfo>,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let (lines_tx, mut lines) = mpsc::channel::<Line>(16);
    std::thread::Builder::new()
        .name("threadhost-stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut reader = stdin.lock();
            let mut buf = Vec::new();
            loop {
                match read_line(&mut reader, MAX_MESSAGE_BYTES, &mut buf) {
                    Ok(Some(line)) => {
                        if lines_tx.blocking_send(line).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading stdin failed; closing the connection");
                        return;
                    }
                }
            }
        })
        .expect("the OS can start the stdin reader thread");

    let (session, outgoing) = Session::open(host, info);
    let mut writer = actix_rt::spawn(write(outgoing, tokio::io::stdout()));
    let mut writer_done = false;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(Line::Text(text)) if text.trim().is_empty() => {}
                Some(Line::Text(text)) => session.receive(&text).await,
                Some(Line::TooLarge(len)) => session.reject(RpcError::too_large(len)).await,
                Some(Line::NotUtf8) => {
                    session.reject(RpcError::new(PARSE_ERROR, "parse error: the message is not valid UTF-8")).await;
                }
                None => {
                    tracing::info!("stdin closed");
                    break;
                }
            },
            _ = &mut writer => {
                writer_done = true;
                break;
            }
            () = &mut shutdown => break,
        }
    }
    session.finish(drain).await;
    if !writer_done && tokio::time::timeout(drain, &mut writer).await.is_err() {
        tracing::warn!("stdout did not drain in time");
    }
}

/// The connection's writer: one line per message, flushed at once.
async fn write<W: tokio::io::AsyncWrite + Unpin>(mut outgoing: Outgoing, mut out: W) {
    while let Some(frame) = outgoing.next().await {
        match frame {
            Frame::Text(mut text) => {
                text.push('\n');
                if let Err(e) = async {
                    out.write_all(text.as_bytes()).await?;
                    out.flush().await
                }
                .await
                {
                    tracing::warn!(error = %e, "writing stdout failed; closing the connection");
                    return;
                }
            }
            Frame::Close(reason) => {
                tracing::warn!(%reason, "the connection was closed by the server");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        // A tiny buffer makes lines cross `fill_buf` chunks.
        let mut r = std::io::BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(l) = read_line(&mut r, max, &mut buf).expect("reading a slice cannot fail") {
            out.push(l);
        }
        out
    }

    #[test]
    fn lines_are_split_on_newlines_and_lose_their_carriage_return() {
        assert_eq!(
            lines(b"{\"a\":1}\r\n\n{}", 100),
            vec![
                Line::Text("{\"a\":1}".into()),
                Line::Text(String::new()),
                Line::Text("{}".into())
            ]
        );
    }

    #[test]
    fn a_line_over_the_limit_is_skipped_and_the_next_one_is_read() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\nok\n");
        assert_eq!(
            lines(&input, 10),
            vec![Line::TooLarge(50), Line::Text("ok".into())]
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_kept() {
        assert_eq!(
            lines(b"0123456789\n", 10),
            vec![Line::Text("0123456789".into())]
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_reported() {
        assert_eq!(lines(b"\xff\xfe\n", 10), vec![Line::NotUtf8]);
    }
}

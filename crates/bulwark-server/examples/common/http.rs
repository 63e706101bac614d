//! A minimal HTTP/1.1 client for the benchmarks: raw requests on keep-alive connections,
//! no client library in the measured path, plus a percentile helper.

#![allow(
    dead_code,
    reason = "bench_memory needs the client, not the percentiles"
)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client connection: one request at a time, no pipelining.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn bad(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// A read of `n` bytes: none means the stream ended, an error mid-response.
fn filled(n: usize) -> std::io::Result<()> {
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    pub async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Response> {
        self.stream.write_all(request).await?;
        loop {
            if let Some((res, used)) = parse_response(&self.buf)? {
                self.buf.drain(..used);
                return Ok(res);
            }
            // Into the buffer's spare room: no zeroed scratch array per read.
            self.buf.reserve(16 * 1024);
            filled(self.stream.read_buf(&mut self.buf).await?)?;
        }
    }
}

/// The response at the start of `buf` and the bytes it takes, or `None` if more are needed.
pub fn parse_response(buf: &[u8]) -> std::io::Result<Option<(Response, usize)>> {
    let mut at = 0;
    // The next line from `at` without its CRLF, moving past it; `None` if incomplete.
    let line = |at: &mut usize| -> Option<String> {
        let i = find(&buf[*at..], b"\r\n")?;
        let l = String::from_utf8_lossy(&buf[*at..*at + i]).into_owned();
        *at += i + 2;
        Some(l)
    };
    let Some(status_line) = line(&mut at) else {
        return Ok(None);
    };
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let Some(l) = line(&mut at) else {
            return Ok(None);
        };
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut res = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = res.header("content-length") {
        let len = len
            .parse::<usize>()
            .map_err(|_| bad("bad content-length"))?;
        let end = at
            .checked_add(len)
            .ok_or_else(|| bad("bad content-length"))?;
        let Some(body) = buf.get(at..end) else {
            return Ok(None);
        };
        res.body = body.to_vec();
        at += len;
    } else if res
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let Some(size_line) = line(&mut at) else {
                return Ok(None);
            };
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                loop {
                    match line(&mut at) {
                        None => return Ok(None),
                        Some(l) if l.is_empty() => break,
                        Some(_) => {}
                    }
                }
                break;
            }
            let end = at.checked_add(size).ok_or_else(|| bad("bad chunk size"))?;
            let Some(chunk) = buf.get(at..end) else {
                return Ok(None);
            };
            res.body.extend_from_slice(chunk);
            at += size;
            if line(&mut at).is_none() {
                return Ok(None);
            }
        }
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        return Err(bad("response without length on a keep-alive connection"));
    }
    Ok(Some((res, at)))
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Nearest-rank percentile in milliseconds.
pub fn percentile_ms(latencies: &[Duration], pct: usize) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let rank = (pct * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

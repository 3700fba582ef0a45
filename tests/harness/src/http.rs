//! Minimal HTTP/1.1 message framing shared by the upstream server and the client. Only what a
//! test harness needs: bounded head parsing, Content-Length and chunked bodies. Every limit is
//! enforced so that hostile or garbage input yields an error, never a panic or unbounded memory.

use std::io::{self, BufRead, Read};

/// Largest request/response head (start line + headers) accepted.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Largest body accepted.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;
/// Most header lines accepted in one head.
const MAX_HEADERS: usize = 200;

/// Why a message could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection cleanly before sending any byte of a new message.
    Eof,
    /// Socket error (including timeouts and resets, and EOF in the middle of a message).
    Io(io::Error),
    /// Bytes that are not valid HTTP/1.x framing.
    Bad(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// A parsed start line plus headers (names kept as sent; look-ups ignore case).
#[derive(Debug)]
pub(crate) struct Head {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// Case-insensitive header look-up (first match).
pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// True if a comma-separated header (e.g. `Connection`) contains `token`, ignoring case.
pub(crate) fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Reads one line (ending in LF) of at most `limit` bytes; `Ok(None)` on EOF before any byte.
fn read_line<R: BufRead>(r: &mut R, limit: usize) -> Result<Option<Vec<u8>>, ReadError> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if line.len() > limit {
            return Err(ReadError::Bad("line too long".into()));
        }
        return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// Reads a message head. Leading empty lines are skipped (RFC 9112 robustness rule).
pub(crate) fn read_head<R: BufRead>(r: &mut R) -> Result<Head, ReadError> {
    let mut budget = MAX_HEAD;
    let mut first = true;
    let start = loop {
        let line = match read_line(r, budget)? {
            Some(l) => l,
            None if first => return Err(ReadError::Eof),
            None => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
        };
        first = false;
        budget = budget.saturating_sub(line.len() + 2);
        if budget == 0 {
            return Err(ReadError::Bad("head too large".into()));
        }
        if !line.is_empty() {
            break String::from_utf8_lossy(&line).into_owned();
        }
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, budget)?
            .ok_or_else(|| ReadError::Io(io::ErrorKind::UnexpectedEof.into()))?;
        budget = budget.saturating_sub(line.len() + 2);
        if budget == 0 {
            return Err(ReadError::Bad("head too large".into()));
        }
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ReadError::Bad("too many headers".into()));
        }
        let line = String::from_utf8_lossy(&line);
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| ReadError::Bad("header line without ':'".into()))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b < 0x21) {
            return Err(ReadError::Bad("invalid header name".into()));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Head { start, headers })
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    None,
    Length(usize),
    Chunked,
    /// Response body delimited by the connection closing (HTTP/1.0 style).
    UntilClose,
}

/// Body framing from headers; `default` applies when neither Transfer-Encoding nor
/// Content-Length is present (None for requests, UntilClose for most responses).
pub(crate) fn body_kind(
    headers: &[(String, String)],
    default: BodyKind,
) -> Result<BodyKind, ReadError> {
    if let Some(te) = header(headers, "transfer-encoding") {
        let last = te.rsplit(',').next().unwrap_or("").trim();
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(BodyKind::Chunked)
        } else {
            Err(ReadError::Bad(format!(
                "unsupported transfer-encoding: {te}"
            )))
        };
    }
    let mut length: Option<usize> = None;
    for (_, v) in headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        let v = v.trim();
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ReadError::Bad("invalid content-length".into()));
        }
        let n: usize = v
            .parse()
            .map_err(|_| ReadError::Bad("content-length too large".into()))?;
        if length.is_some_and(|l| l != n) {
            return Err(ReadError::Bad("conflicting content-length".into()));
        }
        length = Some(n);
    }
    Ok(match length {
        Some(0) => BodyKind::None,
        Some(n) => BodyKind::Length(n),
        None => default,
    })
}

/// Reads a body of the given framing, refusing anything larger than `MAX_BODY`.
pub(crate) fn read_body<R: BufRead>(r: &mut R, kind: BodyKind) -> Result<Vec<u8>, ReadError> {
    match kind {
        BodyKind::None => Ok(Vec::new()),
        BodyKind::Length(n) => {
            if n > MAX_BODY {
                return Err(ReadError::Bad("body too large".into()));
            }
            let mut body = vec![0; n];
            r.read_exact(&mut body)?;
            Ok(body)
        }
        BodyKind::UntilClose => {
            let mut body = Vec::new();
            r.take(MAX_BODY as u64 + 1).read_to_end(&mut body)?;
            if body.len() > MAX_BODY {
                return Err(ReadError::Bad("body too large".into()));
            }
            Ok(body)
        }
        BodyKind::Chunked => {
            let mut body = Vec::new();
            loop {
                let line = read_line(r, 1024)?
                    .ok_or_else(|| ReadError::Io(io::ErrorKind::UnexpectedEof.into()))?;
                let line = String::from_utf8_lossy(&line);
                let size = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| ReadError::Bad("invalid chunk size".into()))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    let mut budget = MAX_HEAD;
                    loop {
                        let t = read_line(r, budget)?
                            .ok_or_else(|| ReadError::Io(io::ErrorKind::UnexpectedEof.into()))?;
                        if t.is_empty() {
                            return Ok(body);
                        }
                        budget = budget.saturating_sub(t.len() + 2);
                        if budget == 0 {
                            return Err(ReadError::Bad("trailers too large".into()));
                        }
                    }
                }
                if size > MAX_BODY - body.len() {
                    return Err(ReadError::Bad("body too large".into()));
                }
                let at = body.len();
                body.resize(at + size, 0);
                r.read_exact(&mut body[at..])?;
                match read_line(r, 2)? {
                    Some(l) if l.is_empty() => {}
                    _ => return Err(ReadError::Bad("chunk not followed by CRLF".into())),
                }
            }
        }
    }
}

/// Standard reason phrase, so answers look normal in logs and to Envoy.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn head(s: &str) -> Result<Head, ReadError> {
        read_head(&mut BufReader::new(s.as_bytes()))
    }

    #[test]
    fn parses_head_and_bodies() {
        let h = head("\r\nGET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        assert_eq!(h.start, "GET / HTTP/1.1");
        assert_eq!(h.header("host"), Some("x"));
        assert_eq!(
            body_kind(&h.headers, BodyKind::None).unwrap(),
            BodyKind::Length(3)
        );
        let mut r = BufReader::new(&b"4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\nT: v\r\n\r\n"[..]);
        assert_eq!(read_body(&mut r, BodyKind::Chunked).unwrap(), b"wikipedia");
        assert!(matches!(head(""), Err(ReadError::Eof)));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nbad\r\n\r\n"),
            Err(ReadError::Bad(_))
        ));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nHost: x"),
            Err(ReadError::Io(_))
        ));
        let h = head("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").unwrap();
        assert!(body_kind(&h.headers, BodyKind::None).is_err());
        let h = head("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").unwrap();
        assert!(body_kind(&h.headers, BodyKind::None).is_err());
        let mut r = BufReader::new(&b"zz\r\n"[..]);
        assert!(matches!(
            read_body(&mut r, BodyKind::Chunked),
            Err(ReadError::Bad(_))
        ));
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(head(&huge), Err(ReadError::Bad(_))));
    }
}

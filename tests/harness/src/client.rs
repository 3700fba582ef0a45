//! Blocking HTTP/1.1 client with one keep-alive connection, over std `TcpStream`. Enough to
//! drive Envoy and the test upstreams without an async runtime. Not thread-safe by design: give
//! each thread its own `Client` (see [`crate::load`] for multi-threaded load).

use std::fmt;
use std::io::{self, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::http::{self, BodyKind, ReadError};

/// Default connect/read/write timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request failed. Kinds are distinct because resilience tests care which failure the
/// proxy produced (a reset is not a timeout).
#[derive(Debug)]
pub enum Error {
    /// Could not connect (refused, unreachable, connect timeout).
    Connect(io::Error),
    /// No data within the timeout while sending or awaiting the answer.
    Timeout,
    /// The peer reset the connection (RST, broken pipe).
    Reset,
    /// The peer closed the connection before a complete response.
    Closed,
    /// The response was not valid HTTP/1.x.
    Protocol(String),
    /// Any other socket error.
    Io(io::Error),
}

impl Error {
    /// Short stable name, used as a key in load reports.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Error::Connect(_) => "connect",
            Error::Timeout => "timeout",
            Error::Reset => "reset",
            Error::Closed => "closed",
            Error::Protocol(_) => "protocol",
            Error::Io(_) => "io",
        }
    }

    fn from_io(e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Error::Reset,
            io::ErrorKind::UnexpectedEof => Error::Closed,
            _ => Error::Io(e),
        }
    }

    fn from_read(e: ReadError) -> Error {
        match e {
            ReadError::Eof => Error::Closed,
            ReadError::Io(e) => Error::from_io(e),
            ReadError::Bad(m) => Error::Protocol(m),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connect failed: {e}"),
            Error::Timeout => f.write_str("timed out"),
            Error::Reset => f.write_str("connection reset by peer"),
            Error::Closed => f.write_str("connection closed before a complete response"),
            Error::Protocol(m) => write!(f, "invalid HTTP response: {m}"),
            Error::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Headers in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header, name matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        http::header(&self.headers, name)
    }

    /// All values of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| e.to_string())
    }

    /// The `x-upstream-id` header set by the test upstreams.
    pub fn upstream_id(&self) -> Option<&str> {
        self.header(crate::upstream::UPSTREAM_ID_HEADER)
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    /// Whether a response has already been read on it (only then is a silent retry safe).
    reused: bool,
}

/// Blocking keep-alive client for one address.
pub struct Client {
    addr: SocketAddr,
    host: String,
    timeout: Duration,
    conn: Option<Conn>,
    connects: u64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            host: addr.to_string(),
            timeout: DEFAULT_TIMEOUT,
            conn: None,
            connects: 0,
        }
    }

    /// Client for `127.0.0.1:port` (Envoy listeners in tests).
    pub fn localhost(port: u16) -> Client {
        Client::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
    }

    /// Connect, read and write timeout (each socket operation, not the whole request).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Default `Host` header (otherwise the address); a `host` in the request headers wins.
    pub fn with_host(mut self, host: &str) -> Client {
        self.host = host.to_string();
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections opened so far (to check keep-alive and reconnects).
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Drops the pooled connection; the next request opens a new one.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response, Error> {
        self.request("GET", path, headers, b"")
    }

    pub fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, Error> {
        self.request("POST", path, headers, body)
    }

    /// Sends one request and reads the whole response. A kept-alive connection that the server
    /// closed meanwhile is replaced transparently (once); a fresh connection's failure is
    /// returned as is, so resets and timeouts caused by the system under test stay visible.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, Error> {
        let raw = self.encode(method, path, headers, body);
        let head_only = method.eq_ignore_ascii_case("HEAD");
        loop {
            if self
                .conn
                .as_ref()
                .is_some_and(|c| stale(c.reader.get_ref()))
            {
                self.conn = None;
            }
            let conn = match self.conn.take() {
                Some(c) => c,
                None => self.connect()?,
            };
            let reused = conn.reused;
            match exchange(conn, &raw, head_only) {
                Ok((resp, Some(mut conn))) => {
                    conn.reused = true;
                    self.conn = Some(conn);
                    return Ok(resp);
                }
                Ok((resp, None)) => return Ok(resp),
                // Stale keep-alive race: the server closed just as we sent. Retry once, fresh.
                Err(Failure::BeforeResponse(_)) if reused => continue,
                Err(Failure::BeforeResponse(e) | Failure::Other(e)) => return Err(e),
            }
        }
    }

    fn connect(&mut self) -> Result<Conn, Error> {
        let stream =
            TcpStream::connect_timeout(&self.addr, self.timeout).map_err(Error::Connect)?;
        self.connects += 1;
        let setup = || -> io::Result<()> {
            stream.set_read_timeout(Some(self.timeout))?;
            stream.set_write_timeout(Some(self.timeout))?;
            stream.set_nodelay(true)
        };
        setup().map_err(Error::Io)?;
        Ok(Conn {
            reader: BufReader::new(stream),
            reused: false,
        })
    }

    fn encode(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + body.len());
        let _ = write!(out, "{method} {path} HTTP/1.1\r\n");
        let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        if !has("host") {
            let _ = write!(out, "host: {}\r\n", self.host);
        }
        for (k, v) in headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        let needs_length = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
        if needs_length && !has("content-length") && !has("transfer-encoding") {
            let _ = write!(out, "content-length: {}\r\n", body.len());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }
}

enum Failure {
    /// Failed before any response byte arrived (write error, or clean EOF).
    BeforeResponse(Error),
    Other(Error),
}

/// True if an idle pooled connection was closed by the server (EOF or error pending).
fn stale(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let r = stream.peek(&mut b);
    let _ = stream.set_nonblocking(false);
    match r {
        Ok(_) => true, // EOF, or unsolicited bytes: either way the connection is unusable.
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Writes the request and reads the response; returns the connection if it stays usable.
fn exchange(
    mut conn: Conn,
    raw: &[u8],
    head_only: bool,
) -> Result<(Response, Option<Conn>), Failure> {
    if let Err(e) = conn.reader.get_mut().write_all(raw) {
        let e = Error::from_io(e);
        return Err(match e {
            Error::Reset => Failure::BeforeResponse(e),
            other => Failure::Other(other),
        });
    }
    let head = loop {
        let head = match http::read_head(&mut conn.reader) {
            Ok(h) => h,
            Err(ReadError::Eof) => return Err(Failure::BeforeResponse(Error::Closed)),
            Err(e) => return Err(Failure::Other(Error::from_read(e))),
        };
        // Skip interim 1xx answers (100 Continue etc.).
        match parse_status(&head.start) {
            Some((_, s)) if (100..200).contains(&s) && s != 101 => continue,
            _ => break head,
        }
    };
    let Some((version, status)) = parse_status(&head.start) else {
        return Err(Failure::Other(Error::Protocol(format!(
            "bad status line: {:?}",
            head.start
        ))));
    };
    let no_body = head_only || status == 204 || status == 304;
    let kind = if no_body {
        BodyKind::None
    } else {
        http::body_kind(&head.headers, BodyKind::UntilClose)
            .map_err(|e| Failure::Other(Error::from_read(e)))?
    };
    let body =
        http::read_body(&mut conn.reader, kind).map_err(|e| Failure::Other(Error::from_read(e)))?;
    let keep = kind != BodyKind::UntilClose
        && if version == "HTTP/1.0" {
            http::has_token(&head.headers, "connection", "keep-alive")
        } else {
            !http::has_token(&head.headers, "connection", "close")
        };
    let resp = Response {
        status,
        headers: head.headers,
        body,
    };
    Ok((resp, keep.then_some(conn)))
}

fn parse_status(line: &str) -> Option<(&str, u16)> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    Some((version, status))
}

//! Reading the PROXY protocol (v1 text or v2 binary) header that a trusted
//! load balancer puts in front of the TLS bytes.
//!
//! Parsing is `ppp`'s; this module reads just enough bytes for it, bounds the
//! header size, classifies failures for the `residency_connections_rejected_total`
//! counter, and hands back the bytes read past the header in [`Prefixed`], so
//! the TLS handshake sees the stream exactly as the client sent it.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 lines are at most 107 bytes; v2 headers we accept at most this long
/// (addresses plus a reasonable set of TLVs).
const MAX_HEADER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection did not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header")]
    Invalid,
    #[error("reading PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

impl ProxyHeaderError {
    /// The `reason` label for `residency_connections_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyHeaderError::Missing => "proxy_header_missing",
            ProxyHeaderError::Invalid => "proxy_header_invalid",
            ProxyHeaderError::Io(_) => "proxy_header_io",
        }
    }
}

/// Reads one PROXY header. Returns the source address it names (`None` for
/// `LOCAL` / `UNKNOWN` connections, e.g. the balancer's own health checks)
/// and the stream with any bytes read past the header put back in front.
pub async fn read_header<T: AsyncRead + Unpin>(
    mut io: T,
) -> Result<(Option<IpAddr>, Prefixed<T>), ProxyHeaderError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Missing);
        }
        buf.extend_from_slice(&chunk[..n]);
        if !starts_like_header(&buf) {
            return Err(ProxyHeaderError::Missing);
        }
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            if buf.len() > MAX_HEADER {
                return Err(ProxyHeaderError::Invalid);
            }
            continue;
        }
        let (source, used) = match parsed {
            HeaderResult::V1(Ok(h)) => (v1_source(&h.addresses), h.header.len()),
            HeaderResult::V2(Ok(h)) => (v2_source(&h), h.len()),
            _ => return Err(ProxyHeaderError::Invalid),
        };
        if used > buf.len() || used > MAX_HEADER {
            return Err(ProxyHeaderError::Invalid);
        }
        let rest = Bytes::from(buf).slice(used..);
        return Ok((
            source.map(|a| a.to_canonical()),
            Prefixed {
                prefix: rest,
                inner: io,
            },
        ));
    }
}

/// True while `buf` could still become a v1 or v2 header.
fn starts_like_header(buf: &[u8]) -> bool {
    [V1_PREFIX, V2_SIGNATURE].iter().any(|sig| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    })
}

fn v1_source(a: &v1::Addresses) -> Option<IpAddr> {
    match a {
        v1::Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
        v1::Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(h: &v2::Header<'_>) -> Option<IpAddr> {
    if h.command == v2::Command::Local {
        return None;
    }
    match h.addresses {
        v2::Addresses::IPv4(a) => Some(IpAddr::V4(a.source_address)),
        v2::Addresses::IPv6(a) => Some(IpAddr::V6(a.source_address)),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }

    /// The stream, and the bytes put back that were not read yet.
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    async fn read(bytes: &[u8]) -> Result<(Option<IpAddr>, Vec<u8>), ProxyHeaderError> {
        let (source, mut rest) = read_header(bytes).await?;
        let mut tail = Vec::new();
        rest.read_to_end(&mut tail).await?;
        Ok((source, tail))
    }

    #[tokio::test]
    async fn v1_and_v2_headers() {
        let (src, tail) = read(b"PROXY TCP4 192.0.2.1 10.0.0.1 5555 443\r\n\x16\x03\x01")
            .await
            .unwrap();
        assert_eq!(src, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(tail, b"\x16\x03\x01");

        let (src, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 5555 443\r\n")
            .await
            .unwrap();
        assert_eq!(src, Some("2001:db8::1".parse().unwrap()));

        let (src, _) = read(b"PROXY UNKNOWN\r\n").await.unwrap();
        assert_eq!(src, None);

        let addrs: (SocketAddr, SocketAddr) = (
            "[::ffff:198.51.100.7]:1000".parse().unwrap(),
            "[::1]:443".parse().unwrap(),
        );
        let mut header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            addrs,
        )
        .build()
        .unwrap();
        header.extend_from_slice(b"tls");
        let (src, tail) = read(&header).await.unwrap();
        assert_eq!(
            src,
            Some("198.51.100.7".parse().unwrap()),
            "mapped addresses are canonical"
        );
        assert_eq!(tail, b"tls");
    }

    #[tokio::test]
    async fn missing_and_malformed() {
        assert!(matches!(
            read(b"\x16\x03\x01\x02\x00").await,
            Err(ProxyHeaderError::Missing)
        ));
        assert!(matches!(
            read(b"GET / HTTP/1.1\r\n").await,
            Err(ProxyHeaderError::Missing)
        ));
        assert!(matches!(read(b"").await, Err(ProxyHeaderError::Missing)));
        assert!(matches!(
            read(b"PROXY TCP4 nope 10.0.0.1 1 2\r\n").await,
            Err(ProxyHeaderError::Invalid)
        ));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 2000]].concat();
        assert!(read(&long).await.is_err());
    }
}

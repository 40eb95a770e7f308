//! The socket under an SMTP session: TCP with TCP_NODELAY, optionally implicit TLS, with bytes
//! already read (the greeting) replayed to lettre first.

// lettre's `AsyncNetworkStream` is deprecated as public API, but it is the only way to run the
// implicit-TLS handshake with lettre's `TlsParameters` over a socket we opened ourselves.
#![allow(deprecated)]

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use lettre::transport::smtp::client::{AsyncNetworkStream, AsyncTokioStream, TlsParameters};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// A stream lettre can drive: a TCP or TLS stream we opened (with TCP_NODELAY: SMTP is a
/// request/response protocol and Nagle's algorithm would stall every command on delayed ACKs),
/// with bytes we already read (the greeting, in the test) replayed first.
pub struct SmtpStream {
    replay: Vec<u8>,
    inner: Pin<Box<dyn Io>>,
    peer: SocketAddr,
}

trait Io: AsyncRead + AsyncWrite + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Send + Sync> Io for T {}

impl SmtpStream {
    pub fn plain(tcp: TcpStream, peer: SocketAddr) -> Self {
        Self {
            replay: Vec::new(),
            inner: Box::pin(tcp),
            peer,
        }
    }

    /// Implicit TLS, with lettre's TLS parameters (the same roots and verification as STARTTLS).
    pub async fn implicit_tls(
        tcp: TcpStream,
        peer: SocketAddr,
        params: TlsParameters,
    ) -> Result<Self, lettre::transport::smtp::Error> {
        let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(Self::plain(tcp, peer)));
        stream.upgrade_tls(params).await?;
        Ok(Self {
            replay: Vec::new(),
            inner: Box::pin(stream.compat()),
            peer,
        })
    }

    /// Returns `bytes` to the next reader before anything from the socket.
    pub fn with_replay(self, bytes: Vec<u8>) -> Self {
        Self {
            replay: bytes,
            ..self
        }
    }
}

impl fmt::Debug for SmtpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmtpStream({})", self.peer)
    }
}

impl AsyncRead for SmtpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay.drain(..n);
            return Poll::Ready(Ok(()));
        }
        self.inner.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for SmtpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

impl AsyncTokioStream for SmtpStream {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

/// Opens a TCP connection to `addr` with TCP_NODELAY set.
pub async fn connect_tcp(addr: SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection to {addr} within {limit:?}"),
            )
        })??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

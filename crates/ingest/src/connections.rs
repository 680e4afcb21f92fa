//! The cap on open gateway connections. Each connection may hold up to its HTTP/2 window of unread frames,
//! so the number of connections, times that window, bounds what the transport buffers. A connection beyond
//! the cap is closed as soon as it is accepted: the gateway sees a reset at once and tries another replica,
//! instead of waiting in the kernel's accept queue without an answer.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::warn;

use crate::metrics as m;

/// A TCP connection that holds one of the open-connection places until it is dropped.
#[derive(Debug)]
pub struct CountedConnection {
    io: TcpStream,
    _place: OwnedSemaphorePermit,
}

impl Drop for CountedConnection {
    fn drop(&mut self) {
        metrics::gauge!(m::CONNECTIONS_OPEN).decrement(1);
    }
}

/// Accepted connections, each with `TCP_NODELAY` (acknowledgements are small: without it, Nagle's algorithm
/// would hold them back), limited to
/// `places` open at once.
pub fn counted(
    accepted: impl Stream<Item = io::Result<TcpStream>>,
    places: Arc<Semaphore>,
) -> impl Stream<Item = io::Result<CountedConnection>> {
    accepted.filter_map(move |accepted| {
        let io = match accepted.and_then(|io| io.set_nodelay(true).map(|()| io)) {
            Ok(io) => io,
            // A connection that failed during accept is that connection's problem, not the listener's.
            Err(e) => {
                warn!("accepting a connection: {e}");
                return None;
            }
        };
        match Arc::clone(&places).try_acquire_owned() {
            Ok(place) => {
                metrics::gauge!(m::CONNECTIONS_OPEN).increment(1);
                Some(Ok(CountedConnection { io, _place: place }))
            }
            Err(_) => {
                metrics::counter!(m::CONNECTIONS_REFUSED_TOTAL).increment(1);
                warn!(
                    peer = ?io.peer_addr().ok(),
                    "connection closed on arrival: flow.max_connections are open"
                );
                None
            }
        }
    })
}

impl Connected for CountedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for CountedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

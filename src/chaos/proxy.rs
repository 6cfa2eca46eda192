//! A TCP proxy that can cut or slow one network link, for partitions.
//!
//! The chaos harness starts one proxy per directed link between the members
//! of a shard (node i's traffic to node j goes through proxy i→j, because
//! node i's own `cluster.toml` names the proxy as node j's address). Each
//! proxy forwards bytes both ways while its link is up. Cutting the link
//! closes every connection through it and refuses new ones at once (like a
//! host that is gone), so both sides see the partition immediately; a delay
//! holds every chunk of bytes for a while before passing it on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a link does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Bytes pass.
    Up,
    /// Connections are closed and refused.
    Cut,
    /// Bytes pass after this extra delay per chunk.
    Delayed(Duration),
    /// Requests pass; replies (bytes from the target) wait until the state
    /// changes: a node that acts on a call but whose answer does not come
    /// back in time.
    RepliesHeld,
}

/// One directed link: listens on `addr`, forwards to a target.
pub struct LinkProxy {
    /// Where the proxy listens.
    addr: SocketAddr,
    /// The link's state, shared with every connection.
    state: Arc<watch::Sender<LinkState>>,
    /// The accept loop.
    task: JoinHandle<()>,
}

impl LinkProxy {
    /// Starts a proxy on a free loopback port, forwarding to `target`.
    /// The port comes from [`crate::ports`], never from the kernel's
    /// ephemeral range, so it cannot be a port the cluster chose for a node.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = bind_free_port().await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(watch::channel(LinkState::Up).0);
        let task = tokio::spawn(accept_loop(listener, target, state.clone()));
        Ok(LinkProxy { addr, state, task })
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the link does; connections notice at once.
    pub fn set(&self, state: LinkState) {
        self.state.send_replace(state);
    }

    /// The link's current state.
    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.send_replace(LinkState::Cut);
    }
}

/// A listener on a port of [`crate::ports`]; another process may take a
/// probed port before it is bound, so a few are tried.
async fn bind_free_port() -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for _ in 0..8 {
        match TcpListener::bind(crate::ports::free_port()?).await {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.expect("eight attempts were made"))
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, state: Arc<watch::Sender<LinkState>>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        if *state.borrow() == LinkState::Cut {
            drop(inbound); // refused: the peer sees a reset at once
            continue;
        }
        let state = state.subscribe();
        tokio::spawn(async move {
            if let Ok(outbound) = TcpStream::connect(target).await {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                relay(inbound, outbound, state).await;
            }
        });
    }
}

/// Copies both directions until either side closes or the link is cut.
async fn relay(inbound: TcpStream, outbound: TcpStream, state: watch::Receiver<LinkState>) {
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let forward = pump(in_read, out_write, state.clone(), false);
    let backward = pump(out_read, in_write, state.clone(), true);
    let mut cut = state;
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
        _ = cut.wait_for(|s| *s == LinkState::Cut) => {}
    }
}

/// Copies one direction (`replies`: from the target back), applying the
/// link's delay or hold.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<LinkState>,
    replies: bool,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if replies && state.wait_for(|s| *s != LinkState::RepliesHeld).await.is_err() {
            return;
        }
        let current = *state.borrow();
        match current {
            LinkState::Cut => return,
            LinkState::Delayed(delay) => tokio::time::sleep(delay).await,
            LinkState::Up | LinkState::RepliesHeld => {}
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut socket = TcpStream::connect(addr).await?;
        socket.write_all(b"ping").await?;
        let mut reply = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), socket.read_exact(&mut reply))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        Ok(reply.to_vec())
    }

    #[tokio::test]
    async fn forwards_while_up_and_refuses_when_cut() {
        let proxy = LinkProxy::start(echo_server().await).await.unwrap();
        assert_eq!(round_trip(proxy.addr()).await.unwrap(), b"ping");
        proxy.set(LinkState::Cut);
        assert!(round_trip(proxy.addr()).await.is_err(), "a cut link passes nothing");
        proxy.set(LinkState::Up);
        assert_eq!(round_trip(proxy.addr()).await.unwrap(), b"ping", "healed");
    }

    #[tokio::test]
    async fn cutting_closes_open_connections() {
        let proxy = LinkProxy::start(echo_server().await).await.unwrap();
        let mut socket = TcpStream::connect(proxy.addr()).await.unwrap();
        socket.write_all(b"ping").await.unwrap();
        let mut reply = [0u8; 4];
        socket.read_exact(&mut reply).await.unwrap();
        proxy.set(LinkState::Cut);
        let read = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut reply)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the open connection is closed: {read:?}");
    }

    #[tokio::test]
    async fn held_replies_come_when_the_hold_ends() {
        let proxy = LinkProxy::start(echo_server().await).await.unwrap();
        proxy.set(LinkState::RepliesHeld);
        let mut socket = TcpStream::connect(proxy.addr()).await.unwrap();
        socket.write_all(b"ping").await.unwrap();
        let mut reply = [0u8; 4];
        let early = tokio::time::timeout(Duration::from_millis(300), socket.read_exact(&mut reply)).await;
        assert!(early.is_err(), "the request passed, its echo is held: {early:?}");
        proxy.set(LinkState::Up);
        tokio::time::timeout(Duration::from_secs(2), socket.read_exact(&mut reply)).await.unwrap().unwrap();
        assert_eq!(&reply, b"ping");
    }

    #[tokio::test]
    async fn a_delayed_link_is_slower() {
        let proxy = LinkProxy::start(echo_server().await).await.unwrap();
        proxy.set(LinkState::Delayed(Duration::from_millis(150)));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(proxy.addr()).await.unwrap(), b"ping");
        assert!(started.elapsed() >= Duration::from_millis(300), "both directions wait: {:?}", started.elapsed());
    }
}

//! A real SOCKS5 proxy in the test process: the server of the `fast-socks5` crate (RFC 1928,
//! no authentication, CONNECT), on 127.0.0.1 with a port of its own, on a private tokio runtime
//! that stops with the [`Socks5Proxy`]. It resolves host names itself, as Tor does for `.onion`,
//! and records each target as the client sent it, so a test can check that a name (not an
//! address resolved on the client) went through the proxy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fast_socks5::server::{run_tcp_proxy, DnsResolveHelper as _, Socks5ServerProtocol};
use fast_socks5::{ReplyError, Socks5Command};

pub struct Socks5Proxy {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
    _rt: tokio::runtime::Runtime,
}

impl Socks5Proxy {
    /// Start one; panics if it cannot listen on 127.0.0.1 (nothing to install).
    pub fn start() -> Socks5Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the SOCKS5 proxy");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("the SOCKS5 proxy listens on 127.0.0.1");
        let addr = listener.local_addr().expect("the proxy's address");
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = targets.clone();
        rt.spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    // A client that goes away mid-handshake is its own business.
                    let _ = serve(socket, seen).await;
                });
            }
        });
        Socks5Proxy {
            addr,
            targets,
            _rt: rt,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The targets of the CONNECT requests so far, as sent (`name:port` or `ip:port`).
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

async fn serve(
    socket: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
) -> Result<(), fast_socks5::SocksError> {
    let (proto, cmd, target) = Socks5ServerProtocol::accept_no_auth(socket)
        .await?
        .read_command()
        .await?;
    if let Ok(mut s) = seen.lock() {
        s.push(target.to_string());
    }
    let (proto, cmd, target) = (proto, cmd, target).resolve_dns().await?;
    match cmd {
        Socks5Command::TCPConnect => {
            run_tcp_proxy(proto, &target, Duration::from_secs(10), false).await?;
        }
        _ => {
            proto.reply_error(&ReplyError::CommandNotSupported).await?;
        }
    }
    Ok(())
}

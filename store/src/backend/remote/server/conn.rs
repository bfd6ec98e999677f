//! One connection: its handshake (which key, so which node; the version), then its requests.
//! Admission (the caps on strangers and on a node's connections) is in the parent module.

use super::*;

pub(super) fn accept_loop(sh: Arc<Shared>, l: TcpListener) {
    loop {
        let (sock, peer) = match l.accept() {
            Ok(x) => x,
            Err(e) => {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                log(4, &format!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let id = sh.next_conn.fetch_add(1, Ordering::SeqCst);
        let clone = match sock.try_clone() {
            Ok(c) => c,
            Err(e) => {
                log(3, &format!("{peer}: cannot register the connection: {e}"));
                continue;
            }
        };
        let active = Arc::new(AtomicU64::new(sh.millis()));
        let mut conns = lock(&sh.conns);
        conns.retain(|_, c| c.thread.as_ref().is_some_and(|t| !t.is_finished()));
        let sh2 = sh.clone();
        let active2 = active.clone();
        let t = std::thread::spawn(move || {
            connection(&sh2, id, sock, peer, &active2);
            lock(&sh2.conns).remove(&id);
        });
        conns.insert(
            id,
            LiveConn {
                sock: clone,
                thread: Some(t),
                state: ConnState::Stranger(peer.ip()),
                since: Instant::now(),
                active,
            },
        );
        drop(conns);
        sh.admit_stranger(id, peer.ip());
    }
}

/// The handshake: which node this is, or why not. `Ok(None)`: refused (logged).
fn handshake(
    sh: &Shared,
    sock: &mut TcpStream,
    peer: SocketAddr,
) -> io::Result<Option<(Channel, NodeEntry, ClientHello)>> {
    let deadline = Instant::now() + sh.opts.handshake_timeout;
    sock.set_nodelay(true)?;
    let msg = channel::server_read_first(sock, deadline)?;
    let mut found = {
        let st = lock(&sh.auth);
        channel::server_match(&msg, &st.keys)?
            .and_then(|(hs, hello, i)| st.auth.nodes().get(i).cloned().map(|e| (hs, hello, e)))
    };
    if found.is_none() && sh.reload_auth() {
        let st = lock(&sh.auth);
        found = channel::server_match(&msg, &st.keys)?
            .and_then(|(hs, hello, i)| st.auth.nodes().get(i).cloned().map(|e| (hs, hello, e)));
    }
    let Some((hs, hello, entry)) = found else {
        channel::server_refuse(sock);
        log(
            4,
            &format!("{peer}: refused: the peer holds none of the auth keys (or is not a cln-backup client)"),
        );
        return Ok(None);
    };
    let hello = match ClientHello::decode(&hello) {
        Ok(h) => h,
        Err(e) => {
            log(4, &format!("{peer}: refused: {e}"));
            return Ok(None);
        }
    };
    let (status, message, grant) = if hello.version != VERSION {
        let side = if hello.version < VERSION {
            "upgrade cln-backup on the node"
        } else {
            "upgrade backup-cli on the server"
        };
        (
            1,
            format!(
                "protocol version {} is not supported: this server speaks {VERSION}; {side} (both sides run the same cln-backup version)",
                hello.version
            ),
            None,
        )
    } else {
        match sh.node(&entry) {
            Ok(n) => {
                let rules = n.rules();
                (
                    0,
                    String::new(),
                    Some(NodeGrant {
                        name: entry.name.clone(),
                        append_only: rules.append_only,
                        quota: rules.quota,
                        used: n.used(),
                    }),
                )
            }
            Err(e) => {
                log(
                    3,
                    &format!(
                        "{peer}: node {}: cannot open its repository: {e}",
                        entry.name
                    ),
                );
                (
                    2,
                    format!(
                        "the server cannot open this node's repository ({}): {e}",
                        sh.root.node_url(&entry.name)
                    ),
                    None,
                )
            }
        }
    };
    let reply = ServerHello {
        version: VERSION,
        status,
        message: message.clone(),
        node: grant,
    };
    sock.set_write_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ))?;
    let chan = channel::server_finish(sock.try_clone()?, hs, &reply.encode())?;
    if status != 0 {
        log(
            4,
            &format!("{peer}: node {}: refused: {message}", entry.name),
        );
        return Ok(None);
    }
    Ok(Some((chan, entry, hello)))
}

fn connection(sh: &Shared, id: u64, mut sock: TcpStream, peer: SocketAddr, active: &AtomicU64) {
    let (mut chan, entry, hello) = match handshake(sh, &mut sock, peer) {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(e) => {
            log(7, &format!("{peer}: handshake not completed: {e}"));
            return;
        }
    };
    let node = match sh.node(&entry) {
        Ok(n) => n,
        Err(_) => return,
    };
    sh.admit_node(id, &entry.name);
    if let Err(e) = sock.set_write_timeout(Some(sh.opts.io_timeout)) {
        log(3, &format!("{peer}: socket setup failed: {e}"));
        return;
    }
    let r = node.rules();
    log(
        6,
        &format!(
            "{peer}: node {} connected ({} bytes stored{}{})",
            entry.name,
            node.used(),
            if r.quota > 0 {
                format!(" of its quota of {}", r.quota)
            } else {
                String::new()
            },
            if r.append_only { ", append-only" } else { "" }
        ),
    );
    node.session_start(hello.session);
    let why = serve_requests(sh, &mut chan, &node, hello.session, active);
    let who = format!("{peer}: node {}", entry.name);
    match why {
        Ok(()) => log(6, &format!("{who}: disconnected")),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            log(6, &format!("{who}: closed after idle or stalled I/O ({e})"))
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => log(4, &format!("{who}: dropped: {e}")),
        Err(e) => log(6, &format!("{who}: disconnected: {e}")),
    }
    if node.session_end(hello.session) {
        log(6, &format!("{who}: released its locks"));
    }
}

/// Answer requests until the peer leaves (`Ok`) or the link fails.
fn serve_requests(
    sh: &Shared,
    chan: &mut Channel,
    node: &node::Node,
    session: [u8; 16],
    active: &AtomicU64,
) -> io::Result<()> {
    // Between frames the idle timeout, within a frame the I/O timeout (switched only for the
    // rare frame of several messages: not two `setsockopt`s per request).
    chan.set_read_timeouts(sh.opts.idle_timeout, sh.opts.io_timeout)?;
    loop {
        let frame = match chan.recv(proto::MAX_FRAME) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        active.store(sh.millis(), Ordering::Relaxed);
        let (id, req) = Request::decode(&frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let resp = match node.handle(&req, session) {
            Ok(body) => proto::encode_ok(id, &body),
            Err(e) => {
                if let proto::RemoteError::Io { .. } = e {
                    log(
                        3,
                        &format!("node {}: {} failed: {e:?}", node.name, req.op_name()),
                    );
                }
                proto::encode_err(id, &e)
            }
        };
        chan.send(&resp)?;
    }
}

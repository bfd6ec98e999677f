//! Unit tests of the remote protocol against a real server on loopback: forged frames (an
//! oversize length, garbage after the handshake, an unknown protocol version) must drop only
//! that connection and leave the repository untouched; decoders must refuse hostile bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use super::channel::{self, Channel};
use super::proto::{self, ClientHello, Request, ServerHello, MAX_FRAME, VERSION};
use super::*;
use crate::backend::dir::DirBackend;
use crate::backend::Backend;

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    key: MasterKey,
    server: ServerHandle,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let backend = Arc::new(DirBackend::create(&root.join("nodes/node1")).unwrap());
    backend.put("config", b"sealed config bytes").unwrap();
    let key = MasterKey::generate();
    let server = ServerHandle::spawn(
        ServerRoot::Dir(root.clone()),
        "127.0.0.1:0",
        ServerAuth::single("node1", auth_key(&key)),
        ServerOptions::default(),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        root,
        key,
        server,
    }
}

fn opts() -> RemoteOptions {
    RemoteOptions {
        tries: 2,
        first_wait: Duration::from_millis(20),
        factor: 1.5,
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(10),
        ..RemoteOptions::default()
    }
}

fn raw_link(f: &Fixture, version: u16) -> (Channel, ServerHello) {
    let sock = TcpStream::connect(f.server.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let hello = ClientHello {
        version,
        session: [7; 16],
    };
    let (chan, reply) = channel::client_handshake(sock, &auth_key(&f.key), &hello.encode())
        .unwrap_or_else(|e| panic!("handshake: {e:?}"));
    (chan, ServerHello::decode(&reply).unwrap())
}

/// Every file under the repository with its content.
fn tree(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn still_serves(f: &Fixture) {
    let c =
        RemoteBackend::connect("127.0.0.1", f.server.addr().port(), None, &f.key, opts()).unwrap();
    assert_eq!(c.get("config").unwrap(), b"sealed config bytes");
}

/// Expect the server to close the link: a read ends (EOF or reset), never with a response.
fn assert_dropped(chan: &mut Channel) {
    let err = chan.recv(MAX_FRAME).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
}

#[test]
fn oversize_frame_is_refused_before_allocation() {
    let f = fixture();
    let before = tree(&f.root);
    let (mut chan, hello) = raw_link(&f, VERSION);
    assert_eq!(hello.status, 0);
    // A header announcing a frame one byte over the limit, then a put's start.
    let mut piece = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    piece.extend_from_slice(
        &Request::Put {
            name: "config",
            data: b"overwritten",
        }
        .encode(1),
    );
    chan.send_piece(&piece).unwrap();
    assert_dropped(&mut chan);
    assert_eq!(tree(&f.root), before);
    still_serves(&f);
}

#[test]
fn garbage_after_the_handshake_drops_the_connection() {
    let f = fixture();
    let before = tree(&f.root);
    // Authenticated but undecodable: an unknown op.
    let (mut chan, _) = raw_link(&f, VERSION);
    chan.send(&[0, 0, 0, 0, 0, 0, 0, 1, 200, 1, 2, 3]).unwrap();
    assert_dropped(&mut chan);
    // A valid frame header but a body longer than it says.
    let (mut chan, _) = raw_link(&f, VERSION);
    let mut piece = 2u32.to_le_bytes().to_vec();
    piece.extend_from_slice(&[1, 2, 3, 4, 5]);
    chan.send_piece(&piece).unwrap();
    assert_dropped(&mut chan);
    // Unencrypted bytes after the handshake fail authentication.
    let (chan, _) = raw_link(&f, VERSION);
    let mut sock = chan.socket().try_clone().unwrap();
    sock.write_all(&[40, 0]).unwrap();
    sock.write_all(&[0x55; 40]).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(sock.read(&mut buf).unwrap_or(0), 0);
    assert_eq!(tree(&f.root), before);
    still_serves(&f);
}

#[test]
fn unknown_version_is_refused_with_a_reason() {
    let f = fixture();
    let (mut chan, hello) = raw_link(&f, 99);
    assert_eq!(hello.status, 1);
    assert_eq!(hello.version, VERSION);
    assert!(hello.message.contains("99"), "{}", hello.message);
    assert_dropped(&mut chan);
    still_serves(&f);
}

#[test]
fn decoders_refuse_hostile_bytes() {
    for bad in [
        &b""[..],
        &[1, 2, 3],
        &[0, 0, 0, 0, 0, 0, 0, 0, 1, 255, 255, 255, 255],
        &[0, 0, 0, 0, 0, 0, 0, 0, 99],
    ] {
        assert!(Request::decode(bad).is_err());
        let _ = proto::decode_response(bad);
        assert!(proto::decode_list(bad).is_err());
    }
    // A count the bytes cannot hold.
    assert!(proto::decode_list(&u64::MAX.to_le_bytes()).is_err());
    assert!(ClientHello::decode(b"notmagic\x01\x00").is_err());
    let h = ClientHello {
        version: VERSION,
        session: [3; 16],
    };
    assert_eq!(ClientHello::decode(&h.encode()).unwrap(), h);
    let r = Request::StreamAppend {
        name: "0000000000000001",
        durability: crate::Durability::Fsync,
        offset: 77,
        data: b"abc",
        data_version: 9,
    };
    assert_eq!(Request::decode(&r.encode(5)).unwrap(), (5, r));
}

#[test]
fn auth_key_is_a_subkey() {
    let k = MasterKey::generate();
    // The auth key is not the repository key, nor any other purpose's subkey.
    assert_ne!(&auth_key(&k), k.as_bytes());
    let line = auth_line("alice", &k);
    let a = ServerAuth::parse(&line, "auth").unwrap();
    assert_eq!(a.nodes()[0].key, auth_key(&k));
}

/// A client of protocol version 1 (before one server held a repository per node) is told, in
/// the version 1 hello it can read, to upgrade the node.
#[test]
fn an_old_client_is_told_to_upgrade_the_node() {
    let f = fixture();
    let (mut chan, hello) = raw_link(&f, 1);
    assert_eq!(
        (hello.status, hello.version, hello.node),
        (1, VERSION, None)
    );
    assert!(
        hello
            .message
            .contains("protocol version 1 is not supported")
            && hello.message.contains("upgrade cln-backup on the node"),
        "{}",
        hello.message
    );
    assert_dropped(&mut chan);
    still_serves(&f);
}

/// A server of protocol version 1 answers a current client with its refusal: the client's
/// error says to upgrade the server, and it does not retry.
#[test]
fn an_old_server_is_named_for_upgrade() {
    let key = MasterKey::generate();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let psk = auth_key(&key);
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let msg = channel::server_read_first(&mut s, deadline).unwrap();
        let (hs, hello, _) = channel::server_match(&msg, &[psk]).unwrap().unwrap();
        assert_eq!(ClientHello::decode(&hello).unwrap().version, VERSION);
        let old = ServerHello {
            version: 1,
            status: 1,
            message: format!("protocol version {VERSION} is not supported (this server speaks 1)"),
            node: None,
        };
        channel::server_finish(s, hs, &old.encode()).unwrap();
    });
    let err = RemoteBackend::connect("127.0.0.1", addr.port(), None, &key, opts())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    t.join().unwrap();
    assert!(err.contains("speaks protocol version 1"), "{err}");
    assert!(err.contains("upgrade backup-cli on the server"), "{err}");
}

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
    let root = dir.path().join("repo");
    let backend = Arc::new(DirBackend::create(&root).unwrap());
    backend.put("config", b"sealed config bytes").unwrap();
    let key = MasterKey::generate();
    let server = ServerHandle::spawn(
        backend,
        "127.0.0.1:0",
        ServerAuth::from_keys(vec![auth_key(&key)]),
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
    };
    assert_eq!(Request::decode(&r.encode(5)).unwrap(), (5, r));
}

#[test]
fn auth_key_file() {
    let k = MasterKey::generate();
    let text = format!("# node a\n\n{}\n", auth_key_hex(&k));
    let a = ServerAuth::parse(&text, "auth.keys").unwrap();
    assert_eq!(a.len(), 1);
    let e = ServerAuth::parse("xyz\n", "auth.keys").unwrap_err();
    assert!(e.to_string().contains("auth.keys line 1"), "{e}");
    assert!(ServerAuth::parse("# nothing\n", "auth.keys").is_err());
    // The auth key is not the repository key, nor any other purpose's subkey.
    assert_ne!(&auth_key(&k), k.as_bytes());
}

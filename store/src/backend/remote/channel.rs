//! The encrypted link: a Noise `NNpsk0_25519_ChaChaPoly_BLAKE2s` handshake keyed with the auth
//! key, then application frames carried in Noise transport messages.
//!
//! On the wire every Noise message is `u16 LE length | message` (1..=65535 bytes); a length of
//! 0 sent by the server instead of its handshake reply means "refused". A frame is `u32 LE
//! length | body`, split into Noise messages of at most 65519 plaintext bytes; a frame always
//! starts a new message and never shares one with the next frame. Transport errors are
//! `io::Error`s: the caller drops the connection.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use snow::{Builder, HandshakeState, TransportState};

pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: a peer speaking another protocol fails the handshake.
pub const PROLOGUE: &[u8] = b"cln-backup remote";
pub const MAX_NOISE_MSG: usize = 65535;
const TAG_LEN: usize = 16;
/// Plaintext carried by one transport message.
pub const MAX_PIECE: usize = MAX_NOISE_MSG - TAG_LEN;

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn noise_err(e: snow::Error) -> io::Error {
    bad(format!("noise: {e}"))
}

pub fn write_msg(sock: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| bad("noise message too long"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(msg);
    sock.write_all(&out)
}

/// Read one message into `buf` (resized); returns its length (0 = refusal marker).
pub fn read_msg(sock: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut len = [0u8; 2];
    sock.read_exact(&mut len)?;
    let n = usize::from(u16::from_le_bytes(len));
    buf.resize(n, 0);
    sock.read_exact(buf)?;
    Ok(n)
}

fn builder(psk: &[u8; 32]) -> Result<Builder<'_>, snow::Error> {
    let params = NOISE_PARAMS.parse()?;
    Builder::new(params).prologue(PROLOGUE)?.psk(0, psk)
}

/// How a client handshake ended short of a link.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// The server sent the refusal marker: it holds no auth key matching ours.
    Refused,
    Io(io::Error),
}

impl From<io::Error> for HandshakeFailure {
    fn from(e: io::Error) -> Self {
        HandshakeFailure::Io(e)
    }
}

/// Client side: send `hello` in the first message, return the link and the server's hello.
pub fn client_handshake(
    mut sock: TcpStream,
    psk: &[u8; 32],
    hello: &[u8],
) -> Result<(Channel, Vec<u8>), HandshakeFailure> {
    let mut hs = builder(psk)
        .and_then(|b| b.build_initiator())
        .map_err(noise_err)?;
    let mut out = vec![0u8; MAX_NOISE_MSG];
    let n = hs.write_message(hello, &mut out).map_err(noise_err)?;
    write_msg(&mut sock, out.get(..n).unwrap_or_default())?;
    let mut msg = Vec::new();
    if read_msg(&mut sock, &mut msg)? == 0 {
        return Err(HandshakeFailure::Refused);
    }
    let mut payload = vec![0u8; MAX_NOISE_MSG];
    let n = hs.read_message(&msg, &mut payload).map_err(|e| {
        bad(format!(
            "the server's handshake reply failed authentication ({e})"
        ))
    })?;
    payload.truncate(n);
    let noise = hs.into_transport_mode().map_err(noise_err)?;
    Ok((Channel::new(sock, noise), payload))
}

/// Read until `buf` is full or `deadline` passes: the deadline bounds the whole read, however
/// slowly the peer sends (a per-read timeout would let one byte every few seconds hold a
/// connection open forever).
fn read_exact_by(sock: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the handshake did not complete in time",
            ));
        }
        sock.set_read_timeout(Some(left))?;
        match sock.read(buf.get_mut(at..).unwrap_or_default()) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Server side, first step: the client's first handshake message, read whole before
/// `deadline`.
pub fn server_read_first(sock: &mut TcpStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    read_exact_by(sock, &mut len, deadline)?;
    let mut msg = vec![0u8; usize::from(u16::from_le_bytes(len))];
    read_exact_by(sock, &mut msg, deadline)?;
    Ok(msg)
}

/// Server side, second step: the auth key the first message was made with, if one of `keys`:
/// the handshake state, the client's hello and the key's index.
pub fn server_match(
    msg: &[u8],
    keys: &[[u8; 32]],
) -> io::Result<Option<(HandshakeState, Vec<u8>, usize)>> {
    let mut payload = vec![0u8; MAX_NOISE_MSG];
    for (i, k) in keys.iter().enumerate() {
        let mut hs = builder(k)
            .and_then(|b| b.build_responder())
            .map_err(noise_err)?;
        if let Ok(n) = hs.read_message(msg, &mut payload) {
            payload.truncate(n);
            return Ok(Some((hs, payload, i)));
        }
    }
    Ok(None)
}

/// Server side: tell a peer whose key matched none that it is refused (the 2-byte marker).
pub fn server_refuse(sock: &mut TcpStream) {
    let _ = write_msg(sock, &[]);
}

/// Server side, second half: send our hello and enter transport mode.
pub fn server_finish(
    mut sock: TcpStream,
    mut hs: HandshakeState,
    hello: &[u8],
) -> io::Result<Channel> {
    let mut out = vec![0u8; MAX_NOISE_MSG];
    let n = hs.write_message(hello, &mut out).map_err(noise_err)?;
    write_msg(&mut sock, out.get(..n).unwrap_or_default())?;
    let noise = hs.into_transport_mode().map_err(noise_err)?;
    Ok(Channel::new(sock, noise))
}

/// An established link: whole frames in, whole frames out.
///
/// Its buffers live as long as the link: a frame costs no allocation beyond the one it is
/// returned in, and it is read with as few `recv` calls as the kernel allows (a small frame's
/// message, length and body, in one), then sent with one `send`.
pub struct Channel {
    sock: TcpStream,
    noise: TransportState,
    /// Bytes read from the socket, `rbuf[rpos..rend]` not yet consumed.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// One decrypted message.
    plain: Vec<u8>,
    /// One piece of a frame being sent, before encryption.
    piece: Vec<u8>,
    /// Messages ready to go out.
    out: Vec<u8>,
    /// The socket's read timeout while waiting for a frame, and within a frame once its first
    /// message is in (see [`Channel::set_read_timeouts`]).
    timeouts: Option<(Duration, Duration)>,
}

/// Room for one whole Noise message and its length.
const RBUF: usize = 2 + MAX_NOISE_MSG;

impl Channel {
    fn new(sock: TcpStream, noise: TransportState) -> Channel {
        Channel {
            sock,
            noise,
            rbuf: vec![0u8; RBUF],
            rpos: 0,
            rend: 0,
            plain: vec![0u8; MAX_NOISE_MSG],
            piece: Vec::new(),
            out: Vec::new(),
            timeouts: None,
        }
    }

    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Reads wait up to `between` for a frame to start, then up to `within` each for the rest
    /// of a frame longer than one message. Set once: the switch (a `setsockopt` each way) is
    /// made only for such frames.
    pub fn set_read_timeouts(&mut self, between: Duration, within: Duration) -> io::Result<()> {
        self.sock.set_read_timeout(Some(between))?;
        self.timeouts = Some((between, within));
        Ok(())
    }

    /// Encrypt `piece` as one transport message onto `self.out`.
    fn seal_piece(noise: &mut TransportState, out: &mut Vec<u8>, piece: &[u8]) -> io::Result<()> {
        let at = out.len();
        out.resize(at + 2 + piece.len() + TAG_LEN, 0);
        let n = noise
            .write_message(piece, out.get_mut(at + 2..).unwrap_or_default())
            .map_err(noise_err)?;
        let n16 = u16::try_from(n).map_err(|_| bad("noise message too long"))?;
        out.truncate(at + 2 + n);
        out.get_mut(at..at + 2)
            .unwrap_or_default()
            .copy_from_slice(&n16.to_le_bytes());
        Ok(())
    }

    /// Send one frame.
    pub fn send(&mut self, body: &[u8]) -> io::Result<()> {
        let len = u32::try_from(body.len()).map_err(|_| bad("frame too long"))?;
        let split = body.len().min(MAX_PIECE - 4);
        let (head, mut rest) = body.split_at(split);
        self.piece.clear();
        self.piece.extend_from_slice(&len.to_le_bytes());
        self.piece.extend_from_slice(head);
        self.out.clear();
        Self::seal_piece(&mut self.noise, &mut self.out, &self.piece)?;
        while !rest.is_empty() {
            if self.out.len() >= 1 << 20 {
                self.sock.write_all(&self.out)?;
                self.out.clear();
            }
            let k = rest.len().min(MAX_PIECE);
            let (p, r) = rest.split_at(k);
            Self::seal_piece(&mut self.noise, &mut self.out, p)?;
            rest = r;
        }
        self.sock.write_all(&self.out)?;
        // Large frames leave large buffers: not kept past the frame.
        if self.out.capacity() > 4 * RBUF {
            self.out = Vec::new();
        }
        self.sock.flush()
    }

    /// Send one raw transport message (tests forge frames with it).
    #[cfg(test)]
    pub(crate) fn send_piece(&mut self, plain: &[u8]) -> io::Result<()> {
        let mut cipher = vec![0u8; MAX_NOISE_MSG];
        let n = self
            .noise
            .write_message(plain, &mut cipher)
            .map_err(noise_err)?;
        write_msg(&mut self.sock, cipher.get(..n).unwrap_or_default())
    }

    /// Make `n` bytes available at `rbuf[rpos..]` (`n` at most [`RBUF`]), reading as much as
    /// the socket has.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        if self.rend - self.rpos >= n {
            return Ok(());
        }
        if self.rpos + n > self.rbuf.len() {
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        }
        while self.rend - self.rpos < n {
            match self
                .sock
                .read(self.rbuf.get_mut(self.rend..).unwrap_or_default())
            {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => self.rend += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read and decrypt one message into `self.plain`; its length.
    fn read_piece(&mut self) -> io::Result<usize> {
        self.fill(2)?;
        let mut len = [0u8; 2];
        len.copy_from_slice(self.rbuf.get(self.rpos..self.rpos + 2).unwrap_or_default());
        let n = usize::from(u16::from_le_bytes(len));
        self.fill(2 + n)?;
        let msg = self
            .rbuf
            .get(self.rpos + 2..self.rpos + 2 + n)
            .unwrap_or_default();
        let k = self
            .noise
            .read_message(msg, &mut self.plain)
            .map_err(|e| bad(format!("a message failed authentication ({e})")))?;
        self.rpos += 2 + n;
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        }
        Ok(k)
    }

    /// Receive one frame of at most `max` bytes; a larger length is refused before anything is
    /// allocated for it.
    pub fn recv(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let got = self.read_piece()?;
        let first = self.plain.get(..got).unwrap_or_default();
        let (len, head) = match (first.get(..4), first.get(4..)) {
            (Some(l), Some(h)) => {
                let mut a = [0u8; 4];
                a.copy_from_slice(l);
                (u32::from_le_bytes(a) as usize, h)
            }
            _ => return Err(bad("frame header shorter than 4 bytes")),
        };
        if len > max {
            return Err(bad(format!(
                "frame of {len} bytes exceeds the limit of {max} bytes"
            )));
        }
        if head.len() > len {
            return Err(bad("frame longer than its header says"));
        }
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(head);
        if body.len() == len {
            return Ok(body);
        }
        // More messages follow: each read within the frame has its own timeout.
        if let Some((_, within)) = self.timeouts {
            self.sock.set_read_timeout(Some(within))?;
        }
        while body.len() < len {
            let got = self.read_piece()?;
            let piece = self.plain.get(..got).unwrap_or_default();
            if body.len() + piece.len() > len || piece.is_empty() {
                return Err(bad("frame longer than its header says"));
            }
            body.extend_from_slice(piece);
        }
        if let Some((between, _)) = self.timeouts {
            self.sock.set_read_timeout(Some(between))?;
        }
        Ok(body)
    }
}

//! Little-endian binary encoding helpers with bounds checks.
//!
//! Every stored structure is encoded through [`Enc`] and decoded through [`Dec`]; `Dec` never
//! panics on short or hostile input, it returns [`Error::Corrupt`] naming the object.

use crate::error::{Error, Result};

#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// u32 length prefix, then the bytes.
    pub fn blob(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.bytes(v)
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub struct Dec<'a> {
    data: &'a [u8],
    pos: usize,
    object: &'a str,
}

impl<'a> Dec<'a> {
    pub fn new(data: &'a [u8], object: &'a str) -> Self {
        Dec {
            data,
            pos: 0,
            object,
        }
    }
    pub fn err(&self, what: impl Into<String>) -> Error {
        Error::corrupt(self.object, what)
    }
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end.and_then(|e| self.data.get(self.pos..e)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated: needed {n} bytes at offset {}, {} left",
                self.pos,
                self.remaining()
            ))),
        }
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn blob(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A count that will be used to allocate: reject counts the remaining bytes cannot hold.
    pub fn count(&mut self, min_item_size: usize) -> Result<usize> {
        let n = self.u64()?;
        let max = (self.remaining() / min_item_size.max(1)) as u64;
        if n > max {
            return Err(self.err(format!(
                "count {n} exceeds what {} bytes can hold",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }
    pub fn end(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.err(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

/// [`Dec`] over a stream (a zstd decoder): a large structure is decoded as it is decompressed,
/// without its decompressed bytes held whole. Counts cannot be checked against the bytes left,
/// so callers cap what a count reserves.
pub struct ReadDec<'a, R: std::io::Read> {
    r: R,
    pos: u64,
    object: &'a str,
}

impl<'a, R: std::io::Read> ReadDec<'a, R> {
    pub fn new(r: R, object: &'a str) -> Self {
        ReadDec { r, pos: 0, object }
    }
    pub fn err(&self, what: impl Into<String>) -> Error {
        Error::corrupt(self.object, what)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        self.r.read_exact(&mut a).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.err(format!(
                    "truncated: needed {N} bytes at offset {}",
                    self.pos
                ))
            } else {
                self.err(format!("zstd: {e}"))
            }
        })?;
        self.pos += N as u64;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn end(&mut self) -> Result<()> {
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.err(format!("trailing bytes after offset {}", self.pos))),
            Err(e) => Err(self.err(format!("zstd: {e}"))),
        }
    }
}

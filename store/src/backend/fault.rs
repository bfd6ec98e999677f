//! A backend wrapper that injects faults, for tests and the fault campaign.
//!
//! Every mutating operation (put, put_if_absent, delete, stream append/truncate/delete/create) is
//! numbered from 1. A [`FaultPlan`] can make operation N fail with an injected error (ENOSPC, EIO),
//! or make the process "crash" at operation N: that operation and every later one (reads too) fail
//! without effect, as if the process had died just before it. A crash on an append can leave a
//! short write (a torn tail) behind.

use std::io;
use std::sync::{Arc, Mutex};

use super::{Backend, Durability, LockGuard, ObjectInfo, Stream};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Operation N fails with ENOSPC, later ones succeed.
    NoSpace,
    /// Operation N fails with EIO, later ones succeed.
    Eio,
    /// Operation N and everything after it fail: the process died before N.
    Crash,
    /// Like `Crash`, but if N is an append, the first half of its bytes reach the stream.
    CrashTorn,
}

#[derive(Default, Debug)]
struct State {
    ops: u64,
    plan: Option<(u64, Fault)>,
    crashed: bool,
    fired: u64,
    log: Vec<String>,
}

/// Shared handle to the fault state: clone it to inspect the log after the run.
#[derive(Clone, Default, Debug)]
pub struct FaultPlan(Arc<Mutex<State>>);

enum Verdict {
    Go,
    Fail(Error),
    Torn,
}

impl FaultPlan {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn at(n: u64, fault: Fault) -> Self {
        let p = Self::default();
        p.set(n, fault);
        p
    }
    pub fn set(&self, n: u64, fault: Fault) {
        let mut s = self.lock();
        s.plan = Some((n, fault));
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// The fault still to come, if any.
    pub fn pending(&self) -> Option<(u64, Fault)> {
        let s = self.lock();
        s.plan.filter(|(at, _)| *at > s.ops)
    }
    /// How many faults have been injected so far.
    pub fn fired(&self) -> u64 {
        self.lock().fired
    }
    /// Mutating operations seen so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }
    /// Forget the crash: the next process starts.
    pub fn restart(&self) {
        let mut s = self.lock();
        s.crashed = false;
        s.plan = None;
    }

    fn check_read(&self, what: &str) -> Result<()> {
        if self.lock().crashed {
            return Err(crashed(what));
        }
        Ok(())
    }

    fn mutate(&self, what: String) -> Verdict {
        let mut s = self.lock();
        if s.crashed {
            return Verdict::Fail(crashed(&what));
        }
        s.ops += 1;
        let n = s.ops;
        s.log.push(format!("{n} {what}"));
        match s.plan {
            Some((at, f)) if at == n => {
                s.fired += 1;
                match f {
                    Fault::NoSpace => Verdict::Fail(Error::io(
                        "write",
                        what,
                        io::Error::from_raw_os_error(libc::ENOSPC),
                    )),
                    Fault::Eio => Verdict::Fail(Error::io(
                        "write",
                        what,
                        io::Error::from_raw_os_error(libc::EIO),
                    )),
                    Fault::Crash => {
                        s.crashed = true;
                        Verdict::Fail(crashed(&what))
                    }
                    Fault::CrashTorn => {
                        s.crashed = true;
                        Verdict::Torn
                    }
                }
            }
            _ => Verdict::Go,
        }
    }
}

fn crashed(what: &str) -> Error {
    Error::io(
        "simulated crash before",
        what,
        io::Error::other("simulated crash"),
    )
}

pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    plan: FaultPlan,
}

impl FaultBackend {
    pub fn new(inner: Arc<dyn Backend>, plan: FaultPlan) -> Self {
        FaultBackend { inner, plan }
    }
}

macro_rules! gate {
    ($self:ident, $what:expr) => {
        match $self.plan.mutate($what) {
            Verdict::Go => {}
            Verdict::Fail(e) => return Err(e),
            Verdict::Torn => return Err(crashed("torn operation")),
        }
    };
}

impl Backend for FaultBackend {
    fn url(&self) -> String {
        self.inner.url()
    }
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        gate!(self, format!("put {name}"));
        self.inner.put(name, data)
    }
    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<bool> {
        gate!(self, format!("put_if_absent {name}"));
        self.inner.put_if_absent(name, data)
    }
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.plan.check_read(name)?;
        self.inner.get(name)
    }
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.plan.check_read(name)?;
        self.inner.get_range(name, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.plan.check_read(prefix)?;
        self.inner.list(prefix)
    }
    fn delete(&self, name: &str) -> Result<()> {
        gate!(self, format!("delete {name}"));
        self.inner.delete(name)
    }
    fn stream_open(&self, name: &str, durability: Durability) -> Result<Box<dyn Stream>> {
        gate!(self, format!("stream_open {name}"));
        let inner = self.inner.stream_open(name, durability)?;
        Ok(Box::new(FaultStream {
            inner,
            plan: self.plan.clone(),
            name: format!("journal/{name}.log"),
        }))
    }
    fn stream_read(&self, name: &str) -> Result<Vec<u8>> {
        self.plan.check_read(name)?;
        self.inner.stream_read(name)
    }
    fn stream_list(&self) -> Result<Vec<ObjectInfo>> {
        self.plan.check_read("streams")?;
        self.inner.stream_list()
    }
    fn stream_delete(&self, name: &str) -> Result<()> {
        gate!(self, format!("stream_delete {name}"));
        self.inner.stream_delete(name)
    }
    fn lock(&self, name: &str, holder: &str) -> Result<Box<dyn LockGuard>> {
        self.plan.check_read(name)?;
        self.inner.lock(name, holder)
    }
}

struct FaultStream {
    inner: Box<dyn Stream>,
    plan: FaultPlan,
    name: String,
}

impl Stream for FaultStream {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn append(&mut self, data: &[u8]) -> Result<()> {
        match self
            .plan
            .mutate(format!("append {} +{}", self.name, data.len()))
        {
            Verdict::Go => self.inner.append(data),
            Verdict::Fail(e) => Err(e),
            Verdict::Torn => {
                let half = data.get(..data.len() / 2).unwrap_or_default();
                let _ = self.inner.append(half);
                Err(crashed("torn append"))
            }
        }
    }
    fn truncate(&mut self, len: u64) -> Result<()> {
        gate!(self, format!("truncate {} to {len}", self.name));
        self.inner.truncate(len)
    }
}

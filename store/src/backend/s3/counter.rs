//! Request counters: every HTTP request the object_store client sends for one backend, counted
//! by kind where it leaves (an [`HttpConnector`] wrapping reqwest's), so retries, list pages
//! and the requests inside a bulk delete are what the service sees and bills.
//! Read with [`super::S3Backend::request_counts`]; subtract two readings for one operation.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::ClientOptions;

/// Requests sent, by kind, and the bytes of their bodies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// PUT without a condition (objects, overwrites, the fallback's writes).
    pub put: u64,
    /// PUT with If-None-Match (create if absent: stream parts, locks, `put_if_absent`).
    pub put_create: u64,
    /// PUT with If-Match (lease renewal and takeover).
    pub put_if_match: u64,
    /// GET of a whole object.
    pub get: u64,
    /// GET with a Range header.
    pub get_range: u64,
    pub head: u64,
    /// One per ListObjectsV2 page.
    pub list: u64,
    pub delete: u64,
    /// POST `?delete` (up to 1000 keys each; object_store 0.14 sends even one delete this way).
    pub bulk_delete: u64,
    pub other: u64,
    /// Request bodies sent (PUT and POST), bytes.
    pub bytes_up: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.put
            + self.put_create
            + self.put_if_match
            + self.get
            + self.get_range
            + self.head
            + self.list
            + self.delete
            + self.bulk_delete
            + self.other
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            put: self.put.saturating_sub(earlier.put),
            put_create: self.put_create.saturating_sub(earlier.put_create),
            put_if_match: self.put_if_match.saturating_sub(earlier.put_if_match),
            get: self.get.saturating_sub(earlier.get),
            get_range: self.get_range.saturating_sub(earlier.get_range),
            head: self.head.saturating_sub(earlier.head),
            list: self.list.saturating_sub(earlier.list),
            delete: self.delete.saturating_sub(earlier.delete),
            bulk_delete: self.bulk_delete.saturating_sub(earlier.bulk_delete),
            other: self.other.saturating_sub(earlier.other),
            bytes_up: self.bytes_up.saturating_sub(earlier.bytes_up),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    by_kind: [AtomicU64; 10],
    bytes_up: AtomicU64,
}

const PUT: usize = 0;
const PUT_CREATE: usize = 1;
const PUT_IF_MATCH: usize = 2;
const GET: usize = 3;
const GET_RANGE: usize = 4;
const HEAD: usize = 5;
const LIST: usize = 6;
const DELETE: usize = 7;
const BULK_DELETE: usize = 8;
const OTHER: usize = 9;

impl Counters {
    fn record(&self, req: &HttpRequest) {
        let h = req.headers();
        let query = req.uri().query().unwrap_or("");
        let kind = match req.method().as_str() {
            "PUT" if h.contains_key("if-none-match") => PUT_CREATE,
            "PUT" if h.contains_key("if-match") => PUT_IF_MATCH,
            "PUT" => PUT,
            "GET" if query.contains("list-type=") => LIST,
            "GET" if h.contains_key("range") => GET_RANGE,
            "GET" => GET,
            "HEAD" => HEAD,
            "DELETE" => DELETE,
            "POST" if query.split('&').any(|p| p == "delete" || p == "delete=") => BULK_DELETE,
            _ => OTHER,
        };
        if let Some(c) = self.by_kind.get(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes_up
            .fetch_add(req.body().content_length() as u64, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> RequestCounts {
        let n = |k: usize| {
            self.by_kind
                .get(k)
                .map(|c| c.load(Ordering::Relaxed))
                .unwrap_or(0)
        };
        RequestCounts {
            put: n(PUT),
            put_create: n(PUT_CREATE),
            put_if_match: n(PUT_IF_MATCH),
            get: n(GET),
            get_range: n(GET_RANGE),
            head: n(HEAD),
            list: n(LIST),
            delete: n(DELETE),
            bulk_delete: n(BULK_DELETE),
            other: n(OTHER),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
        }
    }
}

/// reqwest's connector, with every request counted first.
#[derive(Debug)]
pub(crate) struct CountingConnector(pub(crate) Arc<Counters>);

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingService {
            inner,
            counters: self.0.clone(),
        }))
    }
}

#[derive(Debug)]
struct CountingService {
    inner: HttpClient,
    counters: Arc<Counters>,
}

type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'a>>;

// `HttpService` is an `#[async_trait]` trait; this is its desugared method, written by hand so
// the store needs no async-trait dependency of its own.
impl HttpService for CountingService {
    fn call<'life0, 'async_trait>(&'life0 self, req: HttpRequest) -> CallFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.counters.record(&req);
        Box::pin(self.inner.execute(req))
    }
}

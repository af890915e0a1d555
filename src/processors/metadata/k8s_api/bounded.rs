//! Bounds on what the API server's answers make the agent hold. kube collects a list answer
//! whole before decoding it, and splits a watch into lines with no maximum; a layer under
//! kube's client counts what each response body delivers and fails the body once it passes:
//!
//! - `max_list_bytes` for a whole answer that is not a watch (one list page);
//! - `max_event_bytes` for one line of a watch (one event).
//!
//! At the bound the body ends with [`BoundError`]: the list or the watch fails as any broken
//! answer does (counted in `metadata_errors`, logged once a minute naming the bound, retried
//! after the backoff), and what was read of it is dropped. Names already known stay.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BoundError {
    #[error("the answer is larger than max_list_bytes ({0} bytes); stopped reading it")]
    List(u64),
    #[error("a watch event is larger than max_event_bytes ({0} bytes); stopped reading the watch")]
    Event(u64),
}

impl BoundError {
    /// The bound an error of the client ran into, looking through every error it wraps.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BoundError> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(bound) = e.downcast_ref::<BoundError>() {
                return Some(bound);
            }
            // io::Error's `source` skips the error it carries: look at that one first.
            next = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            };
        }
        None
    }
}

/// The two bounds, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub list_bytes: u64,
    pub event_bytes: u64,
}

/// The layer kube's client is built with.
#[derive(Debug, Clone, Copy)]
pub struct BoundLayer(pub Limits);

impl<S> tower::Layer<S> for BoundLayer {
    type Service = Bound<S>;

    fn layer(&self, inner: S) -> Bound<S> {
        Bound { inner, limits: self.0 }
    }
}

#[derive(Debug, Clone)]
pub struct Bound<S> {
    inner: S,
    limits: Limits,
}

impl<S, Req, B> tower::Service<Request<Req>> for Bound<S>
where
    S: tower::Service<Request<Req>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<Bounded<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        let watch = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "watch=true"));
        let limit =
            if watch { Limit::Line(self.limits.event_bytes) } else { Limit::Whole(self.limits.list_bytes) };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Bounded { inner: Box::pin(body), limit, seen: 0 }))
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    /// The whole body.
    Whole(u64),
    /// Each line (up to a `\n`).
    Line(u64),
}

/// A response body that fails once it passes its bound.
pub struct Bounded<B> {
    inner: Pin<Box<B>>,
    limit: Limit,
    /// Bytes of the body (`Whole`) or of the current line (`Line`) so far.
    seen: u64,
}

impl<B> Bounded<B> {
    /// Counts a chunk; the error when it passes the bound.
    fn count(&mut self, data: &[u8]) -> Result<(), BoundError> {
        match self.limit {
            Limit::Whole(max) => {
                self.seen += data.len() as u64;
                if self.seen > max {
                    return Err(BoundError::List(max));
                }
            }
            Limit::Line(max) => {
                let mut segments = data.split(|b| *b == b'\n').peekable();
                while let Some(segment) = segments.next() {
                    self.seen += segment.len() as u64;
                    if self.seen > max {
                        return Err(BoundError::Event(max));
                    }
                    if segments.peek().is_some() {
                        // A line ended here.
                        self.seen = 0;
                    }
                }
            }
        }
        Ok(())
    }
}

impl<B> Body for Bounded<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(bound) = this.count(data) {
                        return Poll::Ready(Some(Err(Box::new(bound))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded(limit: Limit) -> Bounded<http_body_util::Empty<Bytes>> {
        Bounded { inner: Box::pin(http_body_util::Empty::new()), limit, seen: 0 }
    }

    #[test]
    fn a_whole_answer_fails_past_its_bound() {
        let mut b = bounded(Limit::Whole(10));
        assert!(b.count(b"12345").is_ok() && b.count(b"67890").is_ok());
        assert!(matches!(b.count(b"1"), Err(BoundError::List(10))));
    }

    #[test]
    fn a_watch_fails_on_one_long_line_not_on_many_short_ones() {
        let mut b = bounded(Limit::Line(4));
        for _ in 0..1000 {
            assert!(b.count(b"abc\nde").is_ok());
            assert!(b.count(b"f\n").is_ok());
        }
        assert!(b.count(b"ab").is_ok() && b.count(b"cd").is_ok());
        assert!(matches!(b.count(b"e\n"), Err(BoundError::Event(4))));
        let mut b = bounded(Limit::Line(4));
        assert!(matches!(b.count(b"ok\ntoo long\n"), Err(BoundError::Event(4))));
    }

    #[test]
    fn the_bound_is_found_through_the_errors_that_wrap_it() {
        let io = std::io::Error::other(Box::new(BoundError::Event(1)) as BoxError);
        let kube = kube::Error::ReadEvents(io);
        assert!(matches!(BoundError::find(&kube), Some(BoundError::Event(1))));
        let other = kube::Error::ReadEvents(std::io::Error::other("reset"));
        assert!(BoundError::find(&other).is_none());
    }
}

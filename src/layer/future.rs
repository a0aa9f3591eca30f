//! [`ResponseFuture`]: the inner service's future, or a ready answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use super::ResponseBody;

pin_project! {
    /// The future of [`AutoTlsService`](crate::AutoTlsService).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F },
        // Boxed: a rare path that would otherwise size (and move, and drop-check) every
        // pass-through future as a whole `Response`.
        Answer { response: Option<Box<Response<Option<Bytes>>>> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    pub(crate) fn answer(response: Response<Option<Bytes>>) -> Self {
        Self {
            kind: Kind::Answer {
                response: Some(Box::new(response)),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future
                .poll(cx)
                .map(|r| r.map(|res| res.map(ResponseBody::inner))),
            KindProj::Answer { response } => {
                // Polled again after completion: answer 404 rather than panic.
                let response = response.take().map_or_else(
                    || super::challenge::simple(http::StatusCode::NOT_FOUND, ""),
                    |boxed| *boxed,
                );
                Poll::Ready(Ok(response.map(ResponseBody::answer)))
            }
        }
    }
}

//! [`AutoTlsService`].

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::layer::Shared;
use super::{answer, challenge_token, ResponseFuture};

/// The service [`AutoTlsLayer`](crate::AutoTlsLayer) makes: challenge requests are answered
/// here, all others go to `S` unchanged.
#[derive(Debug, Clone)]
pub struct AutoTlsService<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AutoTlsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<super::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // The pass-through path is one prefix check: small enough to inline into the server's
    // own call site, with the challenge answer kept out of line.
    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if challenge_token(req.uri().path()).is_some() {
            return ResponseFuture::answer(answer_challenge(&self.shared, &req));
        }
        ResponseFuture::inner(self.inner.call(req))
    }
}

/// A request under the challenge prefix: rare, so out of the pass-through path.
#[cold]
#[inline(never)]
fn answer_challenge<B>(shared: &Shared, req: &Request<B>) -> Response<Option<bytes::Bytes>> {
    let token = challenge_token(req.uri().path()).unwrap_or_default();
    answer(&shared.state, req, token)
}

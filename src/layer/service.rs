//! [`AutoTlsService`].

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::{answer, challenge_token, ResponseFuture};
use crate::state::{State, Tasks};

/// The service [`AutoTlsLayer`](crate::AutoTlsLayer) makes: challenge requests are answered
/// here, all others go to `S` unchanged.
#[derive(Debug, Clone)]
pub struct AutoTlsService<S> {
    pub(crate) inner: S,
    pub(crate) state: Arc<State>,
    /// Keeps the certificate tasks alive while the app is served.
    pub(crate) _tasks: Arc<Tasks>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AutoTlsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<super::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match challenge_token(req.uri().path()) {
            Some(token) => ResponseFuture::answer(answer(&self.state, &req, token)),
            None => ResponseFuture::inner(self.inner.call(req)),
        }
    }
}

//! `tokio::join!` for two futures, without tokio's macros feature: the
//! tests run a reader and a writer on one task.

use std::future::{poll_fn, Future};
use std::task::Poll;

/// Runs `x` and `y` on this task until both are done.
pub(crate) async fn both<X: Future, Y: Future>(x: X, y: Y) -> (X::Output, Y::Output) {
    let (mut x, mut y) = (std::pin::pin!(x), std::pin::pin!(y));
    let (mut rx, mut ry) = (None, None);
    poll_fn(|cx| {
        if rx.is_none() {
            if let Poll::Ready(v) = x.as_mut().poll(cx) {
                rx = Some(v);
            }
        }
        if ry.is_none() {
            if let Poll::Ready(v) = y.as_mut().poll(cx) {
                ry = Some(v);
            }
        }
        match (rx.take(), ry.take()) {
            (Some(v), Some(w)) => Poll::Ready((v, w)),
            (v, w) => {
                (rx, ry) = (v, w);
                Poll::Pending
            }
        }
    })
    .await
}

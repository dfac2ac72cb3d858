//! The client's connect loop, written once for both front ends: the
//! engine's [`ConnectCore`] decides each step, a front end's [`Dialer`]
//! makes the calls (blocking ones, or tokio's), and [`drive`] feeds the one
//! to the other. The loop is an `async fn` so that tokio can await it; the
//! blocking front end runs it with [`run_blocking`], where every call
//! completes inside its future's first poll (it blocks there), so nothing
//! ever waits on a waker. (The two loops were near-copies, local and remote
//! alike.) So nothing may be awaited in [`drive`] but the dialer's calls:
//! anything else that can be pending (a tokio timer, a yield) would panic
//! in the blocking front end, whose every arm the integration tests reach
//! (connects, refusals, waits for an instance or for the pipe, remote
//! pipes).

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::engine::connect::{Action, ConnectCore, Connected};
use crate::error::Result;
use crate::info::PeerCredentials;
use crate::name::PipeName;
use crate::options::ClientOptions;
use crate::shm;
use crate::sys::{self, ShmRegion};

/// The calls a front end's connect makes, to a local pipe's socket or to
/// a remote pipe's gateway.
pub(crate) trait Dialer {
    /// What carries the handshake and then the pipe.
    type Conn;

    /// A fresh connection to the local pipe `name`, and the server's kernel
    /// credentials if `cred` asks for them (`None` otherwise: read later,
    /// if at all).
    async fn dial_local(
        &mut self,
        name: &PipeName,
        cred: bool,
    ) -> Result<(Self::Conn, Option<PeerCredentials>)>;

    /// A fresh TLS connection to the gateway of the remote pipe `name`.
    #[cfg(feature = "remote")]
    async fn dial_gateway(&mut self, name: &PipeName, opts: &ClientOptions) -> Result<Self::Conn>;

    /// Sends all of `bytes` (the HELLO, and a pipelined request), with
    /// `offer` riding on the first of them (`SCM_RIGHTS`) if there is one.
    async fn send(&mut self, on: &Self::Conn, bytes: &[u8], offer: Offer<'_>) -> io::Result<()>;

    /// One read of the server's answer into `buf`'s spare room, by
    /// `deadline` if there is one (`None` if it passed first).
    async fn receive(&mut self, on: &Self::Conn, buf: &mut Vec<u8>, by: Option<Instant>) -> Got;

    /// Waits `pause` before the next try.
    async fn pause(&mut self, pause: Duration);
}

/// A try's shared-memory offer, if it makes one.
pub(crate) type Offer<'a> = Option<&'a ShmRegion>;

/// What one read of the answer got: bytes (0: the server closed), an
/// error, or `None` once its deadline passed.
pub(crate) type Got = Option<io::Result<usize>>;

/// A connect that succeeded: the connection, what the server answered, and
/// the shared memory this attempt offered (to be kept if it was taken).
pub(crate) struct Dialled<C> {
    pub conn: C,
    pub connected: Connected,
    pub offer: Option<ShmRegion>,
}

/// Connects to `name` through `dialer` as the engine directs: tries,
/// waits for a free instance, retries, sends the HELLO (`pipelined` behind
/// it, and a fresh shared-memory offer per try if `offers`), reads the
/// answer.
pub(crate) async fn drive<D: Dialer>(
    dialer: &mut D,
    name: &PipeName,
    opts: &ClientOptions,
    pipelined: Option<&[u8]>,
    offers: bool,
) -> Result<Dialled<D::Conn>> {
    // Shared memory is offered on a local pipe's socket only.
    debug_assert!(!offers || name.host().is_none());
    let (mut core, mut action) = ConnectCore::begin(name, opts, pipelined, Instant::now());
    let mut conn: Option<D::Conn> = None;
    let mut offer: Option<ShmRegion> = None;
    // Whether a server may have seen `offer` (it was sent).
    let mut offer_sent = false;
    let mut offering = offers;
    loop {
        action = match action {
            Action::Connect => {
                // A fresh region for each try a server may have seen the
                // last one (it could write into it later; one never sent is
                // kept for the next try), made before the connect: the
                // server is woken by the connect and reads the HELLO at
                // once, which the region's making would hold up (measured:
                // a lending server found no HELLO and yielded on every
                // connection).
                if offer_sent || offer.is_none() {
                    offer = offering.then(shm::transport::offer).and_then(|r| r.ok());
                    offer_sent = false;
                }
                let cred = core.needs_server_cred();
                let mut dialled = dial(dialer, name, opts, cred).await;
                if offer.is_some() && dialled.as_ref().is_err_and(lacks_descriptors) {
                    // The region's descriptor may be the one the connect
                    // lacked: this connection goes without shared memory,
                    // as it would have with the region made after it.
                    offer = None;
                    offering = false;
                    dialled = dial(dialer, name, opts, cred).await;
                }
                match dialled {
                    Ok((dialled, cred)) => {
                        conn = Some(dialled);
                        core.connected(cred, sys::user_name)
                    }
                    Err(e) => core.failed(e, Instant::now()),
                }
            }
            Action::Send(bytes) => {
                let on = conn.as_ref().expect("connected");
                offer_sent = offer.is_some();
                let sent = dialer.send(on, &bytes, offer.as_ref()).await;
                core.sent(sent, Instant::now())
            }
            Action::Receive { deadline } => {
                let on = conn.as_ref().expect("connected");
                let got = dialer.receive(on, core.reply_buffer(), deadline).await;
                core.read_ended(got, Instant::now())
            }
            Action::Pause(pause) => {
                conn = None;
                dialer.pause(pause).await;
                core.resume(Instant::now())
            }
            Action::Done(connected) => {
                return Ok(Dialled {
                    conn: conn.take().expect("connected"),
                    connected,
                    offer,
                })
            }
            Action::Fail(e) => return Err(e),
        }
    }
}

/// Whether a connect failed for want of a file descriptor.
fn lacks_descriptors(e: &crate::error::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(crate::fresh_connection::out_of_descriptors)
}

/// A fresh connection: to the remote pipe's gateway, whose server no kernel
/// here can name ([`PeerCredentials::UNKNOWN`]), or to the local pipe.
async fn dial<D: Dialer>(
    dialer: &mut D,
    name: &PipeName,
    opts: &ClientOptions,
    cred: bool,
) -> Result<(D::Conn, Option<PeerCredentials>)> {
    #[cfg(feature = "remote")]
    if name.host().is_some() {
        let conn = dialer.dial_gateway(name, opts).await?;
        return Ok((conn, Some(PeerCredentials::UNKNOWN)));
    }
    #[cfg(not(feature = "remote"))]
    let _ = opts;
    dialer.dial_local(name, cred).await
}

/// Runs `f` on this thread, for a future whose every await completes when
/// first polled (a blocking [`Dialer`]'s: its calls block inside the poll).
pub(crate) fn run_blocking<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("a blocking dialer's calls complete when polled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future that waits once is a bug in a blocking dialer, and says so
    /// rather than returning nothing.
    #[test]
    #[should_panic(expected = "complete when polled")]
    fn a_future_that_waits_is_refused() {
        let mut once = false;
        run_blocking(std::future::poll_fn(|_| {
            if std::mem::replace(&mut once, true) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
    }

    #[test]
    fn a_future_that_completes_gives_its_output() {
        assert_eq!(run_blocking(async { 7 }), 7);
    }
}

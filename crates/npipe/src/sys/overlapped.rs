//! Windows' overlapped I/O on pipe handles, for the tokio front end. Each
//! operation owns its buffers and its `OVERLAPPED` until the kernel is done
//! with them (a dropped operation is cancelled and waited for first), and
//! its task is woken from the thread pool's wait on the operation's event
//! (`RegisterWaitForSingleObject`), so no thread is held per operation.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use windows_sys::Win32::Foundation::{ERROR_OPERATION_ABORTED, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Threading::{
    CreateEventW, RegisterWaitForSingleObject, UnregisterWaitEx, INFINITE, WT_EXECUTEONLYONCE,
};
use windows_sys::Win32::System::IO::{CancelIoEx, OVERLAPPED};

use super::windows::Pipe;

/// What an operation asks of the kernel, with the buffers it will own.
#[derive(Debug)]
pub enum OpKind {
    /// `ConnectNamedPipe` on a server instance.
    Connect,
    /// `ReadFile` of up to this many bytes.
    Read(usize),
    /// `WriteFile` of these bytes.
    Write(Vec<u8>),
    /// `TransactNamedPipe`: this request, and a reply of up to this many
    /// bytes.
    Transact(Vec<u8>, usize),
}

/// A finished operation: bytes moved, whether more of the same message
/// waits (`ERROR_MORE_DATA`), and the buffer read into (empty for a
/// connect or a write).
#[derive(Debug)]
pub struct Done {
    pub bytes: usize,
    pub more: bool,
    pub buf: Vec<u8>,
}

/// The memory an operation shares with the kernel and the callback.
struct Shared {
    ov: UnsafeCell<OVERLAPPED>,
    signal: Signal,
}

/// What the thread pool's callback shares with the operation's owner.
struct Signal {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// Where the operation stands.
#[derive(Debug)]
enum State {
    /// The kernel has it; the event will say when it is done.
    Pending,
    /// The kernel finished it at once (or a client was already connected).
    Finished(io::Result<(usize, bool)>),
    /// Its outcome was handed out.
    Taken,
}

/// One overlapped operation on a pipe handle, in flight until it is
/// polled to completion or dropped (which cancels it and waits for the
/// kernel to let go of its buffers).
pub struct Overlapped {
    pipe: Arc<Pipe>,
    /// The `OVERLAPPED` the kernel writes until the operation completes,
    /// and the signal the thread pool's callback sets: a heap block owned
    /// through a raw pointer (from `Box::into_raw`, freed in `Drop`), not a
    /// `Box` field, since moving a `Box` would claim exclusive access to
    /// memory the kernel and the callback still use.
    shared: NonNull<Shared>,
    /// Manual-reset, signalled by the kernel on completion.
    event: OwnedHandle,
    /// The thread pool's wait on `event`, or null before one is registered.
    wait: HANDLE,
    /// The bytes read (a read's or transact's reply).
    out: Vec<u8>,
    /// The bytes written (a write's or transact's request), owned until done.
    input: Vec<u8>,
    state: State,
}

// SAFETY: the raw pointers inside (`OVERLAPPED`'s event, the wait handle)
// are process-wide handles, valid from any thread; the shared block is
// owned by this value alone (the callback only reads its thread-safe
// signal); the kernel's writes to the OVERLAPPED end before its event is
// signalled, and the owner reads it only after that (GetOverlappedResult)
// or after cancelling and waiting.
unsafe impl Send for Overlapped {}
// SAFETY: as above; a shared reference gives access to nothing mutable.
unsafe impl Sync for Overlapped {}

impl std::fmt::Debug for Overlapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlapped")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The thread pool calls this when an operation's event is signalled.
///
/// # Safety
/// `ctx` is the address of a live `Signal`: the owner unregisters the wait
/// (waiting for a running callback) before it frees the `Signal`.
unsafe extern "system" fn on_signal(ctx: *mut c_void, _timed_out: bool) {
    // SAFETY: as the function's contract says.
    let signal = unsafe { &*(ctx as *const Signal) };
    signal.fired.store(true, Ordering::SeqCst);
    let waker = signal
        .waker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Which call an operation makes, once its buffers are in place.
#[derive(Debug, Clone, Copy)]
enum Call {
    Connect,
    Read,
    Write,
    Transact,
}

impl Overlapped {
    /// Starts `kind` on `pipe`, a handle opened for overlapped I/O. An
    /// error the kernel gives at once (a broken pipe, say) is returned
    /// here; anything else is the operation's to report when polled.
    pub fn start(pipe: Arc<Pipe>, kind: OpKind) -> io::Result<Overlapped> {
        // SAFETY: no attributes, no name: a fresh manual-reset event, not
        // signalled.
        let event = unsafe { CreateEventW(ptr::null(), 1, 0, ptr::null()) };
        if event.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the handle was just created and is owned by nothing else.
        let event = unsafe { OwnedHandle::from_raw_handle(event) };
        // SAFETY: OVERLAPPED is plain data, for which all zeros is the
        // documented starting state.
        let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
        ov.hEvent = event.as_raw_handle();
        let (call, out_len, input) = match kind {
            OpKind::Connect => (Call::Connect, 0, Vec::new()),
            OpKind::Read(n) => (Call::Read, n, Vec::new()),
            OpKind::Write(bytes) => (Call::Write, 0, bytes),
            OpKind::Transact(request, n) => (Call::Transact, n, request),
        };
        let mut op = Overlapped {
            pipe,
            shared: NonNull::from(Box::leak(Box::new(Shared {
                ov: UnsafeCell::new(ov),
                signal: Signal {
                    fired: AtomicBool::new(false),
                    waker: Mutex::new(None),
                },
            }))),
            event,
            wait: ptr::null_mut(),
            out: vec![0u8; out_len],
            input,
            state: State::Taken,
        };
        op.issue(call)?;
        Ok(op)
    }

    fn shared(&self) -> &Shared {
        // SAFETY: `shared` came from `Box::leak` in `start` and is freed
        // only in `Drop`; everything reached through `&Shared` is either
        // an `UnsafeCell` (the OVERLAPPED, used only as a raw pointer) or
        // thread-safe (the signal).
        unsafe { self.shared.as_ref() }
    }

    /// The OVERLAPPED, as the calls take it.
    fn ov(&self) -> *mut OVERLAPPED {
        self.shared().ov.get()
    }

    fn signal(&self) -> &Signal {
        &self.shared().signal
    }

    /// Makes the call, and sets the state from what it said at once.
    fn issue(&mut self, call: Call) -> io::Result<()> {
        use super::windows::{begin, Began, RawCall};
        let raw = match call {
            Call::Connect => RawCall::Connect,
            Call::Read => RawCall::Read(self.out.as_mut_ptr(), self.out.len()),
            Call::Write => RawCall::Write(self.input.as_ptr(), self.input.len()),
            Call::Transact => RawCall::Transact(
                self.input.as_ptr(),
                self.input.len(),
                self.out.as_mut_ptr(),
                self.out.len(),
            ),
        };
        // SAFETY: every buffer and the OVERLAPPED are owned by `self` and
        // heap-allocated, so they stay where they are until the operation
        // completes: `Drop` cancels and waits for it before freeing them.
        self.state = match unsafe { begin(self.pipe.raw(), raw, self.ov()) } {
            // A client connected between CreateNamedPipe and this call:
            // nothing was queued, and it is a success.
            Began::Connected => State::Finished(Ok((0, false))),
            Began::Pending => {
                self.register_wait()?;
                State::Pending
            }
            Began::Done => State::Finished(self.result()),
            Began::Failed(e) => return Err(e),
        };
        Ok(())
    }

    /// Asks the thread pool to call [`on_signal`] once the event is set.
    fn register_wait(&mut self) -> io::Result<()> {
        let ctx: *const Signal = self.signal();
        // SAFETY: `wait` receives the registration, unregistered in `Drop`
        // (waiting for a running callback) before `signal` or `event` is
        // freed, so the callback's context and the event outlive it.
        let ok = unsafe {
            RegisterWaitForSingleObject(
                &mut self.wait,
                self.event.as_raw_handle(),
                Some(on_signal),
                ctx.cast(),
                INFINITE,
                WT_EXECUTEONLYONCE,
            )
        };
        if ok == 0 {
            let e = io::Error::last_os_error();
            self.wait = ptr::null_mut();
            // The call is in flight: let it go before the buffers do.
            self.cancel_and_wait();
            return Err(e);
        }
        Ok(())
    }

    /// The finished operation's byte count and *more data* flag. A read
    /// cancelled after it took bytes keeps them, as a blocking read cut by
    /// its timeout does (`sys::windows::waited`).
    fn result(&self) -> io::Result<(usize, bool)> {
        use super::windows::{cut_read, finished, Finished};
        // SAFETY: the operation began on this handle with this OVERLAPPED
        // and has completed (its event is set, or the call said so, or it
        // was cancelled and waited for), so there is nothing to wait for.
        match unsafe { finished(self.pipe.raw(), self.ov(), false) } {
            Finished::Done(n, more) => Ok((n, more)),
            Finished::Aborted(n) if n > 0 && self.is_plain_read() => Ok(cut_read(&self.pipe, n)),
            Finished::Aborted(_) => {
                Err(io::Error::from_raw_os_error(ERROR_OPERATION_ABORTED as i32))
            }
            Finished::Failed(e) => Err(e),
        }
    }

    /// Whether this is a `ReadFile` (a buffer to read into, nothing sent).
    fn is_plain_read(&self) -> bool {
        !self.out.is_empty() && self.input.is_empty()
    }

    /// Polls for completion. Once it is ready, the operation is spent:
    /// polling again is an error.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Done>> {
        if let State::Pending = self.state {
            // The waker goes in before the flag is read, so a completion
            // in between finds it (the callback sets the flag, then takes
            // the waker).
            *self
                .signal()
                .waker
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            if !self.signal().fired.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
            self.state = State::Finished(self.result());
        }
        match std::mem::replace(&mut self.state, State::Taken) {
            State::Finished(Ok((bytes, more))) => {
                let mut buf = std::mem::take(&mut self.out);
                buf.truncate(bytes);
                Poll::Ready(Ok(Done { bytes, more, buf }))
            }
            State::Finished(Err(e)) => Poll::Ready(Err(e)),
            State::Pending => unreachable!("settled above"),
            State::Taken => Poll::Ready(Err(io::Error::other(
                "an overlapped operation was polled after it completed",
            ))),
        }
    }

    /// Whether the kernel is done with it (without taking the outcome).
    pub fn is_done(&self) -> bool {
        !matches!(self.state, State::Pending) || self.signal().fired.load(Ordering::SeqCst)
    }

    /// Cancels the operation unless the kernel finished it first, and
    /// gives what it did: `None` if it was cancelled before it did
    /// anything. (A read the kernel filled just before the cancel, or that
    /// the cancel cut after it took bytes, keeps them.)
    pub fn cancel(mut self) -> io::Result<Option<Done>> {
        if let State::Pending = self.state {
            self.cancel_and_wait();
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll(&mut cx) {
            Poll::Ready(Err(e)) if e.raw_os_error() == Some(ERROR_OPERATION_ABORTED as i32) => {
                Ok(None)
            }
            Poll::Ready(done) => done.map(Some),
            Poll::Pending => unreachable!("finished above"),
        }
    }

    /// Cancels the operation if it is still in flight and waits until the
    /// kernel has let go of its buffers.
    fn cancel_and_wait(&mut self) {
        let h = self.pipe.raw();
        // SAFETY: `ov` names this handle's operation, still owned by us;
        // cancelling one that already completed is harmless (it fails with
        // ERROR_NOT_FOUND). Waiting on the result returns once the
        // operation completed, cancelled or not, after which the kernel no
        // longer touches the buffers.
        unsafe {
            CancelIoEx(h, self.ov());
            super::windows::finished(h, self.ov(), true);
        }
        // Done, cancelled or not: what it did (ERROR_OPERATION_ABORTED if
        // nothing), for `cancel`.
        self.state = State::Finished(self.result());
    }
}

impl Drop for Overlapped {
    fn drop(&mut self) {
        if let State::Pending = self.state {
            self.cancel_and_wait();
        }
        if !self.wait.is_null() {
            // SAFETY: a registration made by `register_wait`, unregistered
            // once; INVALID_HANDLE_VALUE waits for a callback that is
            // running, so `signal` is unused once this returns.
            unsafe { UnregisterWaitEx(self.wait, INVALID_HANDLE_VALUE) };
        }
        // SAFETY: the kernel is done with the OVERLAPPED (completed, or
        // cancelled and waited for above) and no callback can run any more
        // (unregistered above, or never registered), so nothing else uses
        // the block; it came from `Box::leak` and is freed once, here.
        drop(unsafe { Box::from_raw(self.shared.as_ptr()) });
    }
}

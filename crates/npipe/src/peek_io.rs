//! `PeekNamedPipe` over a connected transport: take in what has arrived
//! without waiting, then look at it without consuming it. It never blocks,
//! so both front ends peek with it.

use std::io;

use crate::error::Result;
use crate::stream_core::{recv_error, Peek, ReadCore};
use crate::transport::{Recv, Transport};

/// Takes in what has arrived without blocking, then peeks.
pub(crate) fn peek<T: Transport + ?Sized>(
    core: &mut ReadCore,
    sock: &T,
    out: &mut [u8],
) -> Result<Peek> {
    core.check()?;
    // What is left in the kernel: nothing once a receive found it empty;
    // asked (FIONREAD) only if the buffer filled up first.
    let mut kernel_empty = false;
    while core.peek_wants_input() {
        match sock.recv_spare(core.fill_buf(), Recv::DontWait) {
            Ok(n) => core.filled(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                kernel_empty = true;
                break;
            }
            Err(e) => return Err(recv_error(e)),
        }
    }
    let kernel = if kernel_empty {
        0
    } else {
        sock.readable_bytes().unwrap_or(0)
    };
    core.peek(out, kernel)
}

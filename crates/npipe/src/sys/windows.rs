//! The Windows backend's system calls: the kernel's named pipe file system
//! (NPFS) through `kernel32`, each call wrapped once with its `unsafe`
//! reasoned about here. Names, instances, waiting, message boundaries and
//! *more data* are the kernel's; this file only carries them across.

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::ptr;

use windows_sys::Win32::Foundation::{
    ERROR_MORE_DATA, ERROR_PIPE_CONNECTED, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FlushFileBuffers, ReadFile, WriteFile, FILE_FLAG_FIRST_PIPE_INSTANCE,
    FILE_FLAG_OVERLAPPED, FILE_GENERIC_READ, FILE_GENERIC_WRITE, FILE_WRITE_ATTRIBUTES,
    OPEN_EXISTING, PIPE_ACCESS_DUPLEX, PIPE_ACCESS_INBOUND, PIPE_ACCESS_OUTBOUND,
    SECURITY_IDENTIFICATION, SECURITY_IMPERSONATION, SECURITY_SQOS_PRESENT,
};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, DisconnectNamedPipe, GetNamedPipeClientProcessId,
    GetNamedPipeClientSessionId, GetNamedPipeHandleStateW, GetNamedPipeInfo,
    GetNamedPipeServerProcessId, GetNamedPipeServerSessionId, ImpersonateNamedPipeClient,
    PeekNamedPipe, SetNamedPipeHandleState, TransactNamedPipe, WaitNamedPipeW, PIPE_READMODE_BYTE,
    PIPE_READMODE_MESSAGE, PIPE_REJECT_REMOTE_CLIENTS, PIPE_SERVER_END, PIPE_TYPE_BYTE,
    PIPE_TYPE_MESSAGE, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcessId, GetCurrentThread, OpenThreadToken,
};

use crate::error::ErrorCode;
use crate::types::{Access, Direction, ImpersonationLevel, PipeType, ReadMode};

/// The backend's reading of an OS error's number: on Windows it is the
/// Win32 code itself.
pub fn error_code_of(code: i32) -> Option<ErrorCode> {
    u32::try_from(code).ok().and_then(ErrorCode::from_win32)
}

/// This process's id.
pub fn process_id() -> u32 {
    // SAFETY: GetCurrentProcessId takes nothing and cannot fail.
    unsafe { GetCurrentProcessId() }
}

/// Whether this process runs under Wine (its `ntdll` exports
/// `wine_get_version`), whose named pipes differ from Windows' in places
/// the tests name.
pub fn running_under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
    let ntdll = wide("ntdll.dll");
    // SAFETY: `ntdll` is NUL-terminated UTF-16 that outlives the call;
    // ntdll is loaded in every process, and the handle is not freed.
    let module = unsafe { GetModuleHandleW(ntdll.as_ptr()) };
    if module.is_null() {
        return false;
    }
    // SAFETY: a valid module handle and a NUL-terminated ASCII name; the
    // function pointer is only tested, never called.
    unsafe { GetProcAddress(module, c"wine_get_version".as_ptr().cast()) }.is_some()
}

/// A pipe name as the kernel takes it: UTF-16, NUL-terminated.
pub fn wide(path: &str) -> Vec<u16> {
    path.encode_utf16().chain(Some(0)).collect()
}

/// A handle to one end of a pipe instance, closed on drop.
#[derive(Debug)]
pub struct Pipe(OwnedHandle);

impl Pipe {
    pub(super) fn raw(&self) -> HANDLE {
        self.0.as_raw_handle()
    }

    /// Takes a handle a call returned, or its error.
    fn from_call(h: HANDLE) -> io::Result<Pipe> {
        if h == INVALID_HANDLE_VALUE || h.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `h` is a valid handle the call just opened for us, owned
        // by nothing else: the `OwnedHandle` closes it once.
        Ok(Pipe(unsafe { OwnedHandle::from_raw_handle(h) }))
    }
}

/// What `CreateNamedPipeW` is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Instance {
    pub direction: Direction,
    pub pipe_type: PipeType,
    pub read_mode: ReadMode,
    pub max_instances: u32,
    pub out_buffer: u32,
    pub in_buffer: u32,
    pub default_timeout_ms: u32,
    pub first: bool,
    pub reject_remote: bool,
}

/// A security descriptor made from SDDL, freed on drop.
struct Descriptor(*mut core::ffi::c_void);

impl Descriptor {
    fn from_sddl(sddl: &str) -> io::Result<Descriptor> {
        use windows_sys::Win32::Security::Authorization::{
            ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
        };
        let text = wide(sddl);
        let mut sd = ptr::null_mut();
        // SAFETY: `text` is NUL-terminated UTF-16 that outlives the call;
        // `sd` receives a LocalAlloc'd descriptor that `Drop` frees; the
        // size out-parameter may be null.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Descriptor(sd))
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: the pointer came from ConvertStringSecurityDescriptor...,
        // which says to free it with LocalFree, once.
        unsafe { windows_sys::Win32::Foundation::LocalFree(self.0) };
    }
}

/// The DACL of the pipe `pipe` is an end of, in SDDL (as the kernel keeps
/// it: what was applied).
pub fn dacl_sddl(pipe: &Pipe) -> io::Result<String> {
    use windows_sys::Win32::Security::Authorization::{
        ConvertSecurityDescriptorToStringSecurityDescriptorW, GetSecurityInfo, SDDL_REVISION_1,
        SE_KERNEL_OBJECT,
    };
    use windows_sys::Win32::Security::DACL_SECURITY_INFORMATION;
    let mut sd = ptr::null_mut();
    // SAFETY: a valid handle; the pointers we do not want are null, and
    // `sd` receives a LocalAlloc'd descriptor that the guard frees.
    let err = unsafe {
        GetSecurityInfo(
            pipe.raw(),
            SE_KERNEL_OBJECT,
            DACL_SECURITY_INFORMATION,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            &mut sd,
        )
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err as i32));
    }
    let sd = Descriptor(sd);
    let mut text: *mut u16 = ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: `sd.0` is a valid descriptor; `text` receives a LocalAlloc'd
    // string of `len` UTF-16 units, freed below.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd.0,
            SDDL_REVISION_1,
            DACL_SECURITY_INFORMATION,
            &mut text,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let owned = Descriptor(text.cast());
    // SAFETY: `text` points at `len` UTF-16 units (the NUL counted in
    // some versions, so it is trimmed) that live until `owned` drops.
    let units = unsafe { std::slice::from_raw_parts(text, len as usize) };
    let out = String::from_utf16_lossy(units)
        .trim_end_matches('\0')
        .to_string();
    drop(owned);
    Ok(out)
}

/// `CreateNamedPipeW`: one more instance of the pipe at `path`, with the
/// security descriptor `sddl`.
pub fn create_named_pipe(path: &[u16], i: &Instance, sddl: &str) -> io::Result<Pipe> {
    let descriptor = Descriptor::from_sddl(sddl)?;
    let attributes = windows_sys::Win32::Security::SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<windows_sys::Win32::Security::SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor.0,
        bInheritHandle: 0,
    };
    let mut open_mode = match i.direction {
        Direction::Inbound => PIPE_ACCESS_INBOUND,
        Direction::Outbound => PIPE_ACCESS_OUTBOUND,
        Direction::Duplex => PIPE_ACCESS_DUPLEX,
    };
    if i.first {
        open_mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
    }
    // Every handle is overlapped: the blocking front end waits for its
    // calls with a timeout, the tokio one is woken by their events.
    open_mode |= FILE_FLAG_OVERLAPPED;
    let mut pipe_mode = PIPE_WAIT
        | match i.pipe_type {
            PipeType::Byte => PIPE_TYPE_BYTE,
            PipeType::Message => PIPE_TYPE_MESSAGE,
        }
        | match i.read_mode {
            ReadMode::Byte => PIPE_READMODE_BYTE,
            ReadMode::Message => PIPE_READMODE_MESSAGE,
        };
    if i.reject_remote {
        pipe_mode |= PIPE_REJECT_REMOTE_CLIENTS;
    }
    // SAFETY: `path` is NUL-terminated UTF-16 and `attributes` points at a
    // descriptor; both outlive the call (the kernel copies the descriptor).
    let h = unsafe {
        CreateNamedPipeW(
            path.as_ptr(),
            open_mode,
            pipe_mode,
            i.max_instances,
            i.out_buffer,
            i.in_buffer,
            i.default_timeout_ms,
            &attributes,
        )
    };
    drop(descriptor);
    Pipe::from_call(h)
}

/// `WaitNamedPipeW`: until an instance of the pipe at `path` is free.
pub fn wait_named_pipe(path: &[u16], timeout_ms: u32) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated UTF-16 that outlives the call.
    if unsafe { WaitNamedPipeW(path.as_ptr(), timeout_ms) } != 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `CreateFileW` on a pipe: a client end with `access`, and the
/// impersonation level the server may use. A read-only client that will
/// set its read mode (`set_mode`) also asks for `FILE_WRITE_ATTRIBUTES`,
/// as Windows' documentation advises, which a descriptor denying write
/// refuses; one that keeps byte mode asks for read alone. The handle is
/// for overlapped I/O, as every handle here.
pub fn open_pipe(
    path: &[u16],
    access: Access,
    level: ImpersonationLevel,
    set_mode: bool,
) -> io::Result<Pipe> {
    let desired = match access {
        Access::Read if set_mode => FILE_GENERIC_READ | FILE_WRITE_ATTRIBUTES,
        Access::Read => FILE_GENERIC_READ,
        // GetNamedPipeInfo and GetNamedPipeHandleState need it on a
        // write-only handle, as Windows' documentation says.
        Access::Write => {
            FILE_GENERIC_WRITE | windows_sys::Win32::Storage::FileSystem::FILE_READ_ATTRIBUTES
        }
        Access::ReadWrite => FILE_GENERIC_READ | FILE_GENERIC_WRITE,
    };
    let sqos = SECURITY_SQOS_PRESENT
        | match level {
            ImpersonationLevel::Identification => SECURITY_IDENTIFICATION,
            ImpersonationLevel::Impersonation => SECURITY_IMPERSONATION,
        };
    // SAFETY: `path` is NUL-terminated UTF-16 that outlives the call; no
    // security attributes and no template handle.
    let h = unsafe {
        CreateFileW(
            path.as_ptr(),
            desired,
            0,
            ptr::null(),
            OPEN_EXISTING,
            sqos | FILE_FLAG_OVERLAPPED,
            ptr::null_mut(),
        )
    };
    Pipe::from_call(h)
}

/// One call the blocking front end waits for, with the buffers it lends
/// the kernel for that long.
pub enum Call<'a> {
    /// `ConnectNamedPipe` on a server instance.
    Connect,
    /// `ReadFile` into this buffer.
    Read(&'a mut [u8]),
    /// `WriteFile` of these bytes.
    Write(&'a [u8]),
    /// `TransactNamedPipe`: this request out, the reply into that buffer.
    Transact(&'a [u8], &'a mut [u8]),
}

thread_local! {
    /// The event this thread's waited calls signal (manual reset; each call
    /// resets it as it starts): one per thread, made once.
    static EVENT: io::Result<OwnedHandle> = {
        use windows_sys::Win32::System::Threading::CreateEventW;
        // SAFETY: no attributes, manual reset, not signalled, no name; the
        // handle is owned right below.
        let h = unsafe { CreateEventW(ptr::null(), 1, 0, ptr::null()) };
        if h.is_null() {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: CreateEventW just gave us this handle.
            Ok(unsafe { OwnedHandle::from_raw_handle(h) })
        }
    };
}

/// One overlapped call, with the buffers it lends the kernel as raw parts
/// (pointer, length) that its caller keeps alive and unmoved.
pub(crate) enum RawCall {
    /// `ConnectNamedPipe`.
    Connect,
    /// `ReadFile` into these bytes.
    Read(*mut u8, usize),
    /// `WriteFile` of these bytes.
    Write(*const u8, usize),
    /// `TransactNamedPipe`: the request, then the reply's room.
    Transact(*const u8, usize, *mut u8, usize),
}

/// How an overlapped call began.
pub(crate) enum Began {
    /// A connect found its client there already: done, nothing queued.
    Connected,
    /// The kernel has it; the OVERLAPPED's event says when it is done.
    Pending,
    /// Done at once (a partial message too): the count is in the
    /// OVERLAPPED, for `GetOverlappedResult`.
    Done,
    /// Refused at once: the kernel holds nothing.
    Failed(io::Error),
}

/// Makes `call` on `h` with `ov`, and says how it began. The byte-count
/// out-parameters are null, as advised for overlapped calls.
///
/// # Safety
/// `h` is a live handle opened for overlapped I/O; `ov` and every buffer
/// in `call` stay valid and unmoved until the kernel is done with the call
/// (it completed, or it was cancelled and waited for), and nothing else
/// touches them meanwhile.
pub(crate) unsafe fn begin(
    h: HANDLE,
    call: RawCall,
    ov: *mut windows_sys::Win32::System::IO::OVERLAPPED,
) -> Began {
    use windows_sys::Win32::Foundation::ERROR_IO_PENDING;
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let connect = matches!(call, RawCall::Connect);
    // SAFETY: the caller vouches for the handle, the buffers and `ov`.
    let ok = unsafe {
        match call {
            RawCall::Connect => ConnectNamedPipe(h, ov),
            RawCall::Read(buf, n) => ReadFile(h, buf, len(n), ptr::null_mut(), ov),
            RawCall::Write(buf, n) => WriteFile(h, buf, len(n), ptr::null_mut(), ov),
            RawCall::Transact(req, req_n, reply, reply_n) => TransactNamedPipe(
                h,
                req.cast(),
                len(req_n),
                reply.cast(),
                len(reply_n),
                ptr::null_mut(),
                ov,
            ),
        }
    };
    if ok != 0 {
        return Began::Done;
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error().map(|c| c as u32) {
        Some(ERROR_IO_PENDING) => Began::Pending,
        Some(ERROR_MORE_DATA) => Began::Done,
        Some(ERROR_PIPE_CONNECTED) if connect => Began::Connected,
        _ => Began::Failed(e),
    }
}

/// How a call that began ([`begin`]) ended, as `GetOverlappedResult`
/// tells it: what both the blocking wait and the tokio operations make of
/// a finished call.
pub(crate) enum Finished {
    /// Bytes moved, and whether more of the same message waits
    /// (`ERROR_MORE_DATA`).
    Done(usize, bool),
    /// Cancelled (`ERROR_OPERATION_ABORTED`), after moving this many bytes:
    /// a read the cancel cut after it took some keeps them.
    Aborted(usize),
    /// Failed.
    Failed(io::Error),
}

/// The outcome of the call made on `h` with `ov`, waiting for it if `wait`.
///
/// # Safety
/// `ov` is the OVERLAPPED of a call that began on `h` ([`Began::Pending`]
/// or [`Began::Done`]). Without `wait`, the call has completed (its event
/// is set); with it, this returns only once the kernel is done with `ov`
/// and the call's buffers.
pub(crate) unsafe fn finished(
    h: HANDLE,
    ov: *mut windows_sys::Win32::System::IO::OVERLAPPED,
    wait: bool,
) -> Finished {
    use windows_sys::Win32::Foundation::ERROR_OPERATION_ABORTED;
    use windows_sys::Win32::System::IO::GetOverlappedResult;
    let mut n = 0u32;
    // SAFETY: the caller vouches for `h` and `ov`, and for the call having
    // completed when not waiting.
    let ok = unsafe { GetOverlappedResult(h, ov, &mut n, i32::from(wait)) };
    if ok != 0 {
        return Finished::Done(n as usize, false);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error().map(|c| c as u32) {
        Some(ERROR_MORE_DATA) => Finished::Done(n as usize, true),
        Some(ERROR_OPERATION_ABORTED) => Finished::Aborted(n as usize),
        _ => Finished::Failed(e),
    }
}

/// The outcome of a read the cancel cut after it took `n` bytes: they are
/// the caller's, and the kernel says whether the rest of their message
/// waits.
pub(crate) fn cut_read(pipe: &Pipe, n: usize) -> (usize, bool) {
    let more = peek(pipe, &mut []).is_ok_and(|(_, _, left)| left > 0);
    (n, more)
}

/// How a waited call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// Bytes moved, and whether more of the same message follows
    /// (`ERROR_MORE_DATA`).
    Done(usize, bool),
    /// The time ran out: the call was cancelled and the kernel has let go
    /// of its buffers. A read moved nothing; a write's reader may have
    /// taken part of it (the count is what the kernel reported, which Wine
    /// leaves at 0 even then).
    TimedOut(usize),
}

/// Runs `call` on an overlapped handle and waits for it, `timeout` at most
/// (`None`: for ever). A connect that finds its client already there
/// (`ERROR_PIPE_CONNECTED`) succeeded.
pub fn waited(
    pipe: &Pipe,
    call: Call<'_>,
    timeout: Option<std::time::Duration>,
) -> io::Result<Waited> {
    use windows_sys::Win32::Foundation::{ERROR_OPERATION_ABORTED, WAIT_TIMEOUT};
    use windows_sys::Win32::System::Threading::{WaitForSingleObject, INFINITE};
    use windows_sys::Win32::System::IO::{CancelIoEx, OVERLAPPED};
    let event = EVENT.with(|e| match e {
        Ok(h) => Ok(h.as_raw_handle()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    })?;
    // SAFETY: OVERLAPPED is plain data; zeros are a valid start.
    let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
    ov.hEvent = event;
    // One pointer for every call: the kernel writes through it while the
    // call is in flight, so no reference to `ov` is made meanwhile.
    let ovp: *mut OVERLAPPED = &mut ov;
    let h = pipe.raw();
    let plain_read = matches!(call, Call::Read(_));
    let raw = match call {
        Call::Connect => RawCall::Connect,
        Call::Read(buf) => RawCall::Read(buf.as_mut_ptr(), buf.len()),
        Call::Write(buf) => RawCall::Write(buf.as_ptr(), buf.len()),
        Call::Transact(request, reply) => RawCall::Transact(
            request.as_ptr(),
            request.len(),
            reply.as_mut_ptr(),
            reply.len(),
        ),
    };
    // SAFETY: the buffers (borrowed for this call) and `ov` live on this
    // frame, and this function does not return before the kernel is done
    // with them: it waits for completion below (after cancelling on a
    // timeout) on every path that left the call pending.
    match unsafe { begin(h, raw, ovp) } {
        Began::Connected => return Ok(Waited::Done(0, false)),
        Began::Failed(e) => return Err(e),
        Began::Pending | Began::Done => {}
    }
    let ms = timeout.map_or(INFINITE, |t| {
        u32::try_from(t.as_millis())
            .unwrap_or(INFINITE - 1)
            .min(INFINITE - 1)
    });
    // SAFETY: a live event handle.
    let timed_out = unsafe { WaitForSingleObject(event, ms) } == WAIT_TIMEOUT;
    if timed_out {
        // SAFETY: `ovp` is the call's own, still in flight or just done.
        unsafe { CancelIoEx(h, ovp) };
    }
    // SAFETY: waits (bWait) until the kernel is done with `ov` and the
    // buffers: completed, failed or cancelled.
    match unsafe { finished(h, ovp, true) } {
        Finished::Done(n, more) => Ok(Waited::Done(n, more)),
        Finished::Aborted(n) if timed_out && plain_read && n > 0 => {
            let (n, more) = cut_read(pipe, n);
            Ok(Waited::Done(n, more))
        }
        Finished::Aborted(n) if timed_out => Ok(Waited::TimedOut(n)),
        Finished::Aborted(_) => Err(io::Error::from_raw_os_error(ERROR_OPERATION_ABORTED as i32)),
        Finished::Failed(e) => Err(e),
    }
}

/// The pipe's direction, seen from the server (`NtQueryInformationFile`'s
/// `FilePipeLocalInformation`: Win32 has no call that tells it).
pub fn pipe_direction(pipe: &Pipe) -> io::Result<Direction> {
    use windows_sys::Wdk::Storage::FileSystem::{
        FilePipeLocalInformation, NtQueryInformationFile, FILE_PIPE_INBOUND,
        FILE_PIPE_LOCAL_INFORMATION, FILE_PIPE_OUTBOUND,
    };
    use windows_sys::Win32::Foundation::RtlNtStatusToDosError;
    use windows_sys::Win32::System::IO::IO_STATUS_BLOCK;
    // SAFETY: both are plain data; zeros are a valid start.
    let (mut status, mut info): (IO_STATUS_BLOCK, FILE_PIPE_LOCAL_INFORMATION) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: a valid handle; `info` is valid for the size passed and
    // `status` is a live local; a synchronous query.
    let nt = unsafe {
        NtQueryInformationFile(
            pipe.raw(),
            &mut status,
            (&mut info as *mut FILE_PIPE_LOCAL_INFORMATION).cast(),
            std::mem::size_of::<FILE_PIPE_LOCAL_INFORMATION>() as u32,
            FilePipeLocalInformation,
        )
    };
    // Only STATUS_SUCCESS filled `info` (a query of this class never
    // pends; anything else is no answer).
    if nt != 0 {
        // SAFETY: a pure translation of a status code.
        let code = unsafe { RtlNtStatusToDosError(nt) };
        return Err(io::Error::from_raw_os_error(code as i32));
    }
    Ok(match info.NamedPipeConfiguration {
        FILE_PIPE_INBOUND => Direction::Inbound,
        FILE_PIPE_OUTBOUND => Direction::Outbound,
        _ => Direction::Duplex,
    })
}

/// `PeekNamedPipe`: bytes copied, bytes available in all, bytes left of
/// the current message beyond those copied.
pub fn peek(pipe: &Pipe, buf: &mut [u8]) -> io::Result<(usize, usize, usize)> {
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    let (mut copied, mut avail, mut left) = (0u32, 0u32, 0u32);
    // SAFETY: `buf` is valid for `len` bytes of writes; the counters are
    // live locals.
    let ok = unsafe {
        PeekNamedPipe(
            pipe.raw(),
            buf.as_mut_ptr().cast(),
            len,
            &mut copied,
            &mut avail,
            &mut left,
        )
    };
    if ok != 0 {
        Ok((copied as usize, avail as usize, left as usize))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `FlushFileBuffers`: until the other end has read everything written.
pub fn flush(pipe: &Pipe) -> io::Result<()> {
    // SAFETY: a valid pipe handle.
    if unsafe { FlushFileBuffers(pipe.raw()) } != 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `DisconnectNamedPipe` on a server end.
pub fn disconnect(pipe: &Pipe) -> io::Result<()> {
    // SAFETY: a valid pipe handle.
    if unsafe { DisconnectNamedPipe(pipe.raw()) } != 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SetNamedPipeHandleState`: the read mode of this end.
pub fn set_read_mode(pipe: &Pipe, mode: ReadMode) -> io::Result<()> {
    let m = match mode {
        ReadMode::Byte => PIPE_READMODE_BYTE,
        ReadMode::Message => PIPE_READMODE_MESSAGE,
    } | PIPE_WAIT;
    // SAFETY: `m` is a live local; null leaves the collection settings.
    if unsafe { SetNamedPipeHandleState(pipe.raw(), &m, ptr::null(), ptr::null()) } != 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `GetNamedPipeInfo`: whether this is the server end, the pipe's type,
/// its buffer sizes (out, in) and instance limit.
pub fn pipe_info(pipe: &Pipe) -> io::Result<(bool, PipeType, u32, u32, u32)> {
    let (mut flags, mut out_size, mut in_size, mut max) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: the out-parameters are live locals.
    let ok = unsafe {
        GetNamedPipeInfo(
            pipe.raw(),
            &mut flags,
            &mut out_size,
            &mut in_size,
            &mut max,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let pipe_type = if flags & PIPE_TYPE_MESSAGE != 0 {
        PipeType::Message
    } else {
        PipeType::Byte
    };
    Ok((
        flags & PIPE_SERVER_END != 0,
        pipe_type,
        out_size,
        in_size,
        max,
    ))
}

/// `GetNamedPipeHandleStateW`: the instances in use.
pub fn cur_instances(pipe: &Pipe) -> io::Result<u32> {
    let mut cur = 0u32;
    // SAFETY: `cur` is a live local; the other out-parameters are null,
    // which the call allows.
    let ok = unsafe {
        GetNamedPipeHandleStateW(
            pipe.raw(),
            ptr::null_mut(),
            &mut cur,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            0,
        )
    };
    if ok != 0 {
        Ok(cur)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Which end's process or session a query asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Server,
}

/// `GetNamedPipeClientProcessId` / `GetNamedPipeServerProcessId`.
pub fn process_of(pipe: &Pipe, which: Peer) -> io::Result<u32> {
    let mut id = 0u32;
    // SAFETY: `id` is a live local.
    let ok = unsafe {
        match which {
            Peer::Client => GetNamedPipeClientProcessId(pipe.raw(), &mut id),
            Peer::Server => GetNamedPipeServerProcessId(pipe.raw(), &mut id),
        }
    };
    if ok != 0 {
        Ok(id)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `GetNamedPipeClientSessionId` / `GetNamedPipeServerSessionId`.
pub fn session_of(pipe: &Pipe, which: Peer) -> io::Result<u32> {
    let mut id = 0u32;
    // SAFETY: `id` is a live local.
    let ok = unsafe {
        match which {
            Peer::Client => GetNamedPipeClientSessionId(pipe.raw(), &mut id),
            Peer::Server => GetNamedPipeServerSessionId(pipe.raw(), &mut id),
        }
    };
    if ok != 0 {
        Ok(id)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `ImpersonateNamedPipeClient`: this thread takes the client's token.
pub fn impersonate_client(pipe: &Pipe) -> io::Result<()> {
    // SAFETY: a valid server-end pipe handle.
    if unsafe { ImpersonateNamedPipeClient(pipe.raw()) } != 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `RevertToSelf`: this thread drops whatever token it impersonates.
pub fn revert_to_self() -> io::Result<()> {
    // SAFETY: takes nothing; affects only the calling thread.
    if unsafe { windows_sys::Win32::Security::RevertToSelf() } != 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this thread has a token of its own (is impersonating). A
/// thread token that cannot be opened still counts: only "no token" says
/// the thread acts as its process, so a nested impersonation is never
/// stacked on one this call could not see.
pub fn thread_impersonates() -> bool {
    !matches!(
        open_thread_token(windows_sys::Win32::Security::TOKEN_QUERY),
        Ok(None)
    )
}

/// The token this thread impersonates, opened for `access` (checked
/// against the process, not the client: OpenAsSelf), or `None` if the
/// thread has none (`ERROR_NO_TOKEN`).
pub(crate) fn open_thread_token(
    access: windows_sys::Win32::Security::TOKEN_ACCESS_MASK,
) -> io::Result<Option<OwnedHandle>> {
    use windows_sys::Win32::Foundation::ERROR_NO_TOKEN;
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: the current-thread pseudo-handle needs no closing; `token`
    // receives a handle owned right below.
    let ok = unsafe { OpenThreadToken(GetCurrentThread(), access, 1, &mut token) };
    if ok == 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(ERROR_NO_TOKEN as i32) {
            return Ok(None);
        }
        return Err(e);
    }
    // SAFETY: OpenThreadToken just gave us this handle.
    Ok(Some(unsafe { OwnedHandle::from_raw_handle(token) }))
}

/// The token this thread impersonates; "no token" is an error here.
pub(super) fn impersonated(
    access: windows_sys::Win32::Security::TOKEN_ACCESS_MASK,
) -> io::Result<OwnedHandle> {
    use windows_sys::Win32::Foundation::ERROR_NO_TOKEN;
    open_thread_token(access)?.ok_or_else(|| io::Error::from_raw_os_error(ERROR_NO_TOKEN as i32))
}

/// The client's user name, from `GetNamedPipeHandleStateW` on a server end
/// (the kernel asks the client's token: it needs the client to allow
/// impersonation).
pub fn client_user_name(pipe: &Pipe) -> io::Result<String> {
    let mut name = [0u16; 257];
    // SAFETY: `name` is valid for its length in UTF-16 units, which is what
    // the last argument says; the other out-parameters are null.
    let ok = unsafe {
        GetNamedPipeHandleStateW(
            pipe.raw(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            name.as_mut_ptr(),
            name.len() as u32,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Ok(String::from_utf16_lossy(&name[..len]))
}

// ---- Accounts: SIDs behind `LocalUser` and `LocalGroup` ----------------
//
// A `LocalUser` (or `LocalGroup`) holds a small number; on Windows it is an
// index into this process's table of the SIDs it has met, so the portable
// types stay `Copy` and the table turns them back into SIDs. Nothing here
// leaves the process: the protocol never carries a local identity.

/// The SIDs met so far; index 0 is LocalSystem (`S-1-5-18`), `LocalUser::ROOT`.
static SIDS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// LocalSystem's SID, in binary: revision 1, one sub-authority, NT
/// authority (5), 18.
const LOCAL_SYSTEM: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];

fn sids() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    let mut table = SIDS.lock().unwrap_or_else(|e| e.into_inner());
    if table.is_empty() {
        table.push(LOCAL_SYSTEM.to_vec());
    }
    table
}

/// The number standing for `sid` in this process.
fn intern(sid: &[u8]) -> u32 {
    let mut table = sids();
    if let Some(i) = table.iter().position(|s| s == sid) {
        return i as u32;
    }
    table.push(sid.to_vec());
    (table.len() - 1) as u32
}

/// The SID a number stands for.
fn sid_of(id: u32) -> Option<Vec<u8>> {
    sids().get(id as usize).cloned()
}

/// The bytes of the SID at `psid`.
///
/// # Safety
/// `psid` points at a valid SID.
unsafe fn sid_bytes(psid: *mut core::ffi::c_void) -> Vec<u8> {
    // SAFETY: the caller vouches for `psid`; GetLengthSid reads its header.
    let len = unsafe { windows_sys::Win32::Security::GetLengthSid(psid) } as usize;
    // SAFETY: a valid SID is `len` readable bytes.
    unsafe { std::slice::from_raw_parts(psid as *const u8, len) }.to_vec()
}

/// A SID in its string form (`S-1-5-21-...`).
pub fn sid_string(id: u32) -> Option<String> {
    use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
    let mut sid = sid_of(id)?;
    let mut text: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` holds a valid SID (it came from the system); `text`
    // receives a LocalAlloc'd string, freed below.
    if unsafe { ConvertSidToStringSidW(sid.as_mut_ptr().cast(), &mut text) } == 0 {
        return None;
    }
    let owned = Descriptor(text.cast());
    // SAFETY: `text` is NUL-terminated and lives until `owned` drops.
    let len = (0..).take_while(|&i| unsafe { *text.add(i) } != 0).count();
    // SAFETY: `len` units before the NUL, as just counted.
    let out = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, len) });
    drop(owned);
    Some(out)
}

/// The account named `name` (`alice`, `DOMAIN\alice`) or the SID `S-1-...`.
fn account(name: &str) -> Option<u32> {
    use windows_sys::Win32::Security::Authorization::ConvertStringSidToSidW;
    use windows_sys::Win32::Security::LookupAccountNameW;
    if name.starts_with("S-1-") {
        let text = wide(name);
        let mut psid = ptr::null_mut();
        // SAFETY: `text` is NUL-terminated; `psid` receives a LocalAlloc'd
        // SID that the guard frees after it is copied.
        if unsafe { ConvertStringSidToSidW(text.as_ptr(), &mut psid) } == 0 {
            return None;
        }
        let guard = Descriptor(psid);
        // SAFETY: the call just made `psid` a valid SID.
        let bytes = unsafe { sid_bytes(psid) };
        drop(guard);
        return Some(intern(&bytes));
    }
    let text = wide(name);
    let mut sid = vec![0u8; 68]; // SECURITY_MAX_SID_SIZE
    let mut sid_len = sid.len() as u32;
    let mut domain = vec![0u16; 256];
    let mut domain_len = domain.len() as u32;
    let mut kind = 0;
    // SAFETY: every buffer is valid for the length passed beside it; the
    // system name is null (this machine).
    let ok = unsafe {
        LookupAccountNameW(
            ptr::null(),
            text.as_ptr(),
            sid.as_mut_ptr().cast(),
            &mut sid_len,
            domain.as_mut_ptr(),
            &mut domain_len,
            &mut kind,
        )
    };
    if ok == 0 {
        return None;
    }
    sid.truncate(sid_len as usize);
    Some(intern(&sid))
}

/// The user with this name or SID.
pub fn uid_of_user(name: &str) -> Option<u32> {
    account(name)
}

/// The group with this name or SID.
pub fn gid_of_group(name: &str) -> Option<u32> {
    account(name)
}

/// An account's name, from its SID.
pub fn user_name(id: u32) -> Option<String> {
    use windows_sys::Win32::Security::LookupAccountSidW;
    let mut sid = sid_of(id)?;
    let mut name = vec![0u16; 256];
    let mut name_len = name.len() as u32;
    let mut domain = vec![0u16; 256];
    let mut domain_len = domain.len() as u32;
    let mut kind = 0;
    // SAFETY: `sid` is a valid SID; the buffers are valid for the lengths
    // passed beside them; the system name is null (this machine).
    let ok = unsafe {
        LookupAccountSidW(
            ptr::null(),
            sid.as_mut_ptr().cast(),
            name.as_mut_ptr(),
            &mut name_len,
            domain.as_mut_ptr(),
            &mut domain_len,
            &mut kind,
        )
    };
    (ok != 0).then(|| String::from_utf16_lossy(&name[..name_len as usize]))
}

/// The user of a token.
fn token_user(token: HANDLE) -> io::Result<u32> {
    use windows_sys::Win32::Security::{TokenUser, TOKEN_USER};
    let buf = token_information(token, TokenUser)?;
    // SAFETY: the call filled a TOKEN_USER at the start of `buf`, whose
    // SID pointer points into `buf`, alive here.
    let sid = unsafe { sid_bytes((*(buf.as_ptr() as *const TOKEN_USER)).User.Sid) };
    Ok(intern(&sid))
}

/// A handle closed on drop.
struct Owned(HANDLE);

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: a handle we opened and own, closed once.
        unsafe { windows_sys::Win32::Foundation::CloseHandle(self.0) };
    }
}

/// The user this thread acts as: the token it impersonates, else its
/// process's (as a Linux thread's effective uid is its own).
pub fn effective_uid() -> u32 {
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
    match open_thread_token(windows_sys::Win32::Security::TOKEN_QUERY) {
        Ok(Some(token)) => return token_user(token.as_raw_handle()).unwrap_or(u32::MAX),
        Ok(None) => {}
        // Impersonating someone this thread may not look at: not the
        // process's user, and no one else either.
        Err(_) => return u32::MAX,
    }
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: the current-process pseudo-handle needs no closing; `token`
    // receives a handle the guard closes.
    if unsafe {
        OpenProcessToken(
            GetCurrentProcess(),
            windows_sys::Win32::Security::TOKEN_QUERY,
            &mut token,
        )
    } == 0
    {
        return 0;
    }
    let token = Owned(token);
    token_user(token.0).unwrap_or(0)
}

/// The user of the process with this id (its token, as far as this
/// process may ask).
pub fn process_user(pid: u32) -> io::Result<u32> {
    use windows_sys::Win32::System::Threading::{
        OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    // SAFETY: plain call; the handle it returns is closed by the guard.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(io::Error::last_os_error());
    }
    let process = Owned(process);
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: a valid process handle; `token` receives a handle the guard
    // closes.
    if unsafe {
        OpenProcessToken(
            process.0,
            windows_sys::Win32::Security::TOKEN_QUERY,
            &mut token,
        )
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    let token = Owned(token);
    token_user(token.0)
}

/// The user of the token this thread impersonates.
pub fn impersonated_user() -> io::Result<u32> {
    let token = impersonated(windows_sys::Win32::Security::TOKEN_QUERY)?;
    token_user(token.as_raw_handle())
}

/// What the token this thread impersonates says of its user: the user,
/// its primary group, its groups and the level it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFacts {
    pub user: u32,
    pub group: u32,
    pub groups: Vec<u32>,
    pub level: ImpersonationLevel,
}

/// The token this thread impersonates, as [`TokenFacts`].
pub fn impersonated_token() -> io::Result<TokenFacts> {
    use windows_sys::Win32::Security::{
        SecurityImpersonation, TokenGroups, TokenImpersonationLevel, TokenPrimaryGroup,
        TOKEN_GROUPS, TOKEN_PRIMARY_GROUP,
    };
    let token = impersonated(windows_sys::Win32::Security::TOKEN_QUERY)?;
    let raw = token.as_raw_handle();
    let user = token_user(raw)?;
    let primary = token_information(raw, TokenPrimaryGroup)?;
    // SAFETY: the call filled a TOKEN_PRIMARY_GROUP at the start of the
    // buffer, whose SID pointer points into the same live buffer.
    let group = intern(&unsafe {
        sid_bytes((*(primary.as_ptr() as *const TOKEN_PRIMARY_GROUP)).PrimaryGroup)
    });
    let list = token_information(raw, TokenGroups)?;
    let header = list.as_ptr() as *const TOKEN_GROUPS;
    // SAFETY: the call filled a TOKEN_GROUPS: a count, then that many
    // SID_AND_ATTRIBUTES whose SIDs point into the same live buffer.
    let groups = unsafe {
        let count = (*header).GroupCount as usize;
        let first = std::ptr::addr_of!((*header).Groups)
            .cast::<windows_sys::Win32::Security::SID_AND_ATTRIBUTES>();
        (0..count)
            .map(|i| intern(&sid_bytes((*first.add(i)).Sid)))
            .collect()
    };
    let level = token_information(raw, TokenImpersonationLevel)?;
    // SAFETY: the call wrote a SECURITY_IMPERSONATION_LEVEL (an i32) at the
    // start of the buffer.
    let level = unsafe { *(level.as_ptr() as *const i32) };
    Ok(TokenFacts {
        user,
        group,
        groups,
        level: if level >= SecurityImpersonation {
            ImpersonationLevel::Impersonation
        } else {
            ImpersonationLevel::Identification
        },
    })
}

/// `GetTokenInformation` of one class, in a buffer sized by asking first
/// (8-byte aligned, as every TOKEN_* structure needs).
fn token_information(
    token: HANDLE,
    class: windows_sys::Win32::Security::TOKEN_INFORMATION_CLASS,
) -> io::Result<Vec<u64>> {
    use windows_sys::Win32::Security::GetTokenInformation;
    let mut len = 0u32;
    // SAFETY: a null buffer of length 0 asks for the size, written to `len`.
    unsafe { GetTokenInformation(token, class, ptr::null_mut(), 0, &mut len) };
    // A token's groups are bounded by the system; never size past 1 MiB.
    let words = (len as usize).clamp(8, 1 << 20).div_ceil(8);
    let mut buf = vec![0u64; words];
    // SAFETY: `buf` is valid and aligned for `words * 8` bytes, as passed.
    let ok = unsafe {
        GetTokenInformation(
            token,
            class,
            buf.as_mut_ptr().cast(),
            (words * 8) as u32,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf)
}

/// `GetNamedPipeClientComputerNameW`: the client's computer, for a client
/// that came over the network (an error for a local one: `ERROR_PIPE_LOCAL`).
/// Wine 8 has the function as a stub that aborts the process, and no
/// network pipes: there every client is local.
pub fn client_computer_name(pipe: &Pipe) -> io::Result<String> {
    use windows_sys::Win32::System::Pipes::GetNamedPipeClientComputerNameW;
    /// The client is on this machine.
    const ERROR_PIPE_LOCAL: i32 = 229;
    if running_under_wine() {
        return Err(io::Error::from_raw_os_error(ERROR_PIPE_LOCAL));
    }
    let mut name = [0u16; 256];
    // SAFETY: `name` is valid for the byte length passed.
    let ok = unsafe {
        GetNamedPipeClientComputerNameW(pipe.raw(), name.as_mut_ptr(), (name.len() * 2) as u32)
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Ok(String::from_utf16_lossy(&name[..len]))
}

/// A pipe in the kernel's pipe file system, as a directory listing of
/// `\\.\pipe\` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPipe {
    /// The name after `\\.\pipe\`.
    pub name: String,
    /// Instances that exist (NPFS reports them as the file's size).
    pub cur_instances: u32,
}

/// Every pipe on this machine: `FindFirstFileW`/`FindNextFileW` on
/// `\\.\pipe\*`, as Sysinternals PipeList does.
pub fn list_pipes() -> io::Result<Vec<ListedPipe>> {
    use windows_sys::Win32::Foundation::ERROR_NO_MORE_FILES;
    use windows_sys::Win32::Storage::FileSystem::{
        FindClose, FindFirstFileW, FindNextFileW, WIN32_FIND_DATAW,
    };
    let pattern = wide(r"\\.\pipe\*");
    // SAFETY: WIN32_FIND_DATAW is plain data; zeros are a valid start.
    let mut data: WIN32_FIND_DATAW = unsafe { std::mem::zeroed() };
    // SAFETY: `pattern` is NUL-terminated UTF-16 and `data` a live local,
    // both outliving the call.
    let find = unsafe { FindFirstFileW(pattern.as_ptr(), &mut data) };
    if find == INVALID_HANDLE_VALUE {
        let e = io::Error::last_os_error();
        // An empty directory.
        if e.raw_os_error() == Some(ERROR_NO_MORE_FILES as i32)
            || e.raw_os_error() == Some(windows_sys::Win32::Foundation::ERROR_FILE_NOT_FOUND as i32)
        {
            return Ok(Vec::new());
        }
        return Err(e);
    }
    let mut pipes = Vec::new();
    loop {
        let len = data
            .cFileName
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(data.cFileName.len());
        pipes.push(ListedPipe {
            name: String::from_utf16_lossy(&data.cFileName[..len]),
            cur_instances: data.nFileSizeLow,
        });
        // SAFETY: `find` is the open search handle; `data` a live local.
        if unsafe { FindNextFileW(find, &mut data) } == 0 {
            break;
        }
    }
    let e = io::Error::last_os_error();
    // SAFETY: the search handle, closed once.
    unsafe { FindClose(find) };
    if e.raw_os_error() != Some(ERROR_NO_MORE_FILES as i32) {
        return Err(e);
    }
    Ok(pipes)
}

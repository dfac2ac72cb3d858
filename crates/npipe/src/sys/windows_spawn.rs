//! Starting a process as a pipe's client (`CreateProcessAsUserW` with the
//! client's token made primary), and waiting for it or ending it. The
//! command line, environment block and directory come ready-made from the
//! portable side (`crate::windows::spawn`); only the calls are here.

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::ptr;

use windows_sys::Win32::Foundation::{
    SetHandleInformation, HANDLE, HANDLE_FLAG_INHERIT, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Security::{
    DuplicateTokenEx, SecurityImpersonation, TokenPrimary, TOKEN_ADJUST_DEFAULT,
    TOKEN_ADJUST_SESSIONID, TOKEN_ASSIGN_PRIMARY, TOKEN_DUPLICATE, TOKEN_QUERY,
};
use windows_sys::Win32::System::Pipes::CreatePipe;
use windows_sys::Win32::System::Threading::{
    CreateProcessAsUserW, DeleteProcThreadAttributeList, GetExitCodeProcess,
    InitializeProcThreadAttributeList, TerminateProcess, UpdateProcThreadAttribute,
    WaitForSingleObject, CREATE_NO_WINDOW, CREATE_UNICODE_ENVIRONMENT,
    EXTENDED_STARTUPINFO_PRESENT, PROCESS_INFORMATION, PROC_THREAD_ATTRIBUTE_HANDLE_LIST,
    STARTF_USESTDHANDLES, STARTUPINFOEXW,
};

/// What to start: all UTF-16 and NUL-terminated as the call wants them.
pub struct SpawnSpec {
    /// The program's full path, found by the caller (never searched for
    /// by `CreateProcess`, which would look in the server's directories).
    pub application: Vec<u16>,
    /// The whole command line (`CreateProcess` may write into it).
    pub command_line: Vec<u16>,
    /// `NAME=VALUE\0...\0\0`, sorted as Windows wants.
    pub environment: Vec<u16>,
    /// The directory it starts in, or the caller's.
    pub current_dir: Option<Vec<u16>>,
}

/// A started process: its handle and id, and this side of its standard
/// input, output and error.
pub struct Spawned {
    pub process: OwnedHandle,
    pub pid: u32,
    pub stdin: OwnedHandle,
    pub stdout: OwnedHandle,
    pub stderr: OwnedHandle,
}

/// The token this thread impersonates, duplicated as a primary token a
/// process can be started with. `ERROR_BAD_IMPERSONATION_LEVEL` when the
/// client allowed identification only.
pub fn thread_token_as_primary() -> io::Result<OwnedHandle> {
    let token = super::windows::impersonated(TOKEN_DUPLICATE | TOKEN_QUERY)?;
    let mut primary: HANDLE = ptr::null_mut();
    // SAFETY: `token` is a live token handle; `primary` receives a new
    // handle, owned right below; no attributes (not inheritable).
    let ok = unsafe {
        DuplicateTokenEx(
            token.as_raw_handle(),
            TOKEN_ASSIGN_PRIMARY
                | TOKEN_DUPLICATE
                | TOKEN_QUERY
                | TOKEN_ADJUST_DEFAULT
                | TOKEN_ADJUST_SESSIONID,
            ptr::null(),
            SecurityImpersonation,
            TokenPrimary,
            &mut primary,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: DuplicateTokenEx just gave us this handle.
    Ok(unsafe { OwnedHandle::from_raw_handle(primary) })
}

/// An anonymous pipe for one of the child's standard streams: (ours, the
/// child's), neither inheritable yet.
fn stdio_pipe(child_reads: bool) -> io::Result<(OwnedHandle, OwnedHandle)> {
    let (mut read, mut write): (HANDLE, HANDLE) = (ptr::null_mut(), ptr::null_mut());
    // SAFETY: both out-pointers are live locals; no attributes, so neither
    // handle is inheritable.
    if unsafe { CreatePipe(&mut read, &mut write, ptr::null(), 0) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CreatePipe just gave us both handles.
    let (read, write) = unsafe {
        (
            OwnedHandle::from_raw_handle(read),
            OwnedHandle::from_raw_handle(write),
        )
    };
    Ok(if child_reads {
        (write, read)
    } else {
        (read, write)
    })
}

/// Makes `handle` inheritable, or not.
fn set_inheritable(handle: &OwnedHandle, yes: bool) -> io::Result<()> {
    let flags = if yes { HANDLE_FLAG_INHERIT } else { 0 };
    // SAFETY: a live handle of ours; only its inherit flag changes.
    if unsafe { SetHandleInformation(handle.as_raw_handle(), HANDLE_FLAG_INHERIT, flags) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A process thread attribute list naming the only handles this child may
/// inherit, so that it takes nothing else of ours that happens to be
/// inheritable. (A process another thread starts in the moment the child's
/// ends are inheritable could still inherit them: std's own lock against
/// that is private to std.)
struct HandleList {
    buf: Vec<u64>,
    /// The handles the list points at: they must stay put while it lives.
    _handles: Box<[HANDLE; 3]>,
}

impl HandleList {
    fn new(handles: [HANDLE; 3]) -> io::Result<HandleList> {
        let mut size = 0usize;
        // SAFETY: a null list asks for the size needed, written to `size`.
        unsafe { InitializeProcThreadAttributeList(ptr::null_mut(), 1, 0, &mut size) };
        let mut buf = vec![0u64; size.div_ceil(8).max(1)];
        // SAFETY: `buf` is at least `size` bytes, 8-byte aligned.
        if unsafe { InitializeProcThreadAttributeList(buf.as_mut_ptr().cast(), 1, 0, &mut size) }
            == 0
        {
            return Err(io::Error::last_os_error());
        }
        let handles = Box::new(handles);
        let mut list = HandleList {
            buf,
            _handles: handles,
        };
        // SAFETY: the list was initialised above; the value is the boxed
        // array, which lives (unmoved) as long as the list.
        let ok = unsafe {
            UpdateProcThreadAttribute(
                list.buf.as_mut_ptr().cast(),
                0,
                PROC_THREAD_ATTRIBUTE_HANDLE_LIST as usize,
                list._handles.as_ptr().cast(),
                std::mem::size_of::<[HANDLE; 3]>(),
                ptr::null_mut(),
                ptr::null(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(list)
    }
}

impl Drop for HandleList {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, deleted once.
        unsafe { DeleteProcThreadAttributeList(self.buf.as_mut_ptr().cast()) };
    }
}

/// `CreateProcessAsUserW` with `token` (a primary token): the child's
/// standard input, output and error are pipes whose other ends come back.
/// `ERROR_PRIVILEGE_NOT_HELD` (1314) unless this process may assign
/// primary tokens (`SeAssignPrimaryTokenPrivilege`, as services running as
/// LocalSystem have) or the token is a restricted form of its own.
pub fn create_process_as_user(token: &OwnedHandle, spec: &mut SpawnSpec) -> io::Result<Spawned> {
    let (stdin, child_in) = stdio_pipe(true)?;
    let (stdout, child_out) = stdio_pipe(false)?;
    let (stderr, child_err) = stdio_pipe(false)?;
    for end in [&child_in, &child_out, &child_err] {
        set_inheritable(end, true)?;
    }
    let list = HandleList::new([
        child_in.as_raw_handle(),
        child_out.as_raw_handle(),
        child_err.as_raw_handle(),
    ])?;
    // SAFETY: STARTUPINFOEXW is plain data; zeros are a valid start.
    let mut info: STARTUPINFOEXW = unsafe { std::mem::zeroed() };
    info.StartupInfo.cb = std::mem::size_of::<STARTUPINFOEXW>() as u32;
    info.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
    info.StartupInfo.hStdInput = child_in.as_raw_handle();
    info.StartupInfo.hStdOutput = child_out.as_raw_handle();
    info.StartupInfo.hStdError = child_err.as_raw_handle();
    info.lpAttributeList = list.buf.as_ptr() as *mut _;
    // SAFETY: PROCESS_INFORMATION is plain data, filled by the call.
    let mut process: PROCESS_INFORMATION = unsafe { std::mem::zeroed() };
    let dir = spec
        .current_dir
        .as_ref()
        .map_or(ptr::null(), |d| d.as_ptr());
    // SAFETY: every string is NUL-terminated UTF-16 (the environment block
    // double-NUL-terminated) and outlives the call; the command line is
    // writable as the call requires; `info` and its attribute list live
    // until after it; `process` is a live local.
    let ok = unsafe {
        CreateProcessAsUserW(
            token.as_raw_handle(),
            spec.application.as_ptr(),
            spec.command_line.as_mut_ptr(),
            ptr::null(),
            ptr::null(),
            1,
            CREATE_UNICODE_ENVIRONMENT | EXTENDED_STARTUPINFO_PRESENT | CREATE_NO_WINDOW,
            spec.environment.as_ptr().cast(),
            dir,
            &info.StartupInfo,
            &mut process,
        )
    };
    let failed = (ok == 0).then(io::Error::last_os_error);
    drop(list);
    // The child has its copies: ours close now, inheritable for no longer.
    drop((child_in, child_out, child_err));
    if let Some(e) = failed {
        return Err(e);
    }
    // SAFETY: the call gave us both handles; the thread's is not needed.
    let (handle, thread) = unsafe {
        (
            OwnedHandle::from_raw_handle(process.hProcess),
            OwnedHandle::from_raw_handle(process.hThread),
        )
    };
    drop(thread);
    Ok(Spawned {
        process: handle,
        pid: process.dwProcessId,
        stdin,
        stdout,
        stderr,
    })
}

/// Waits up to `ms` (`u32::MAX`: for ever) for the process to exit: its
/// exit code, or `None` if it still runs.
pub fn wait_process(process: &OwnedHandle, ms: u32) -> io::Result<Option<u32>> {
    // SAFETY: a live process handle.
    match unsafe { WaitForSingleObject(process.as_raw_handle(), ms) } {
        WAIT_OBJECT_0 => {
            let mut code = 0u32;
            // SAFETY: a live process handle; `code` a live local.
            if unsafe { GetExitCodeProcess(process.as_raw_handle(), &mut code) } == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Some(code))
        }
        WAIT_TIMEOUT => Ok(None),
        _ => Err(io::Error::last_os_error()),
    }
}

/// `TerminateProcess` with exit code 1, as std's `Child::kill`.
pub fn terminate_process(process: &OwnedHandle) -> io::Result<()> {
    // SAFETY: a live process handle.
    if unsafe { TerminateProcess(process.as_raw_handle(), 1) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The system directory (`GetSystemDirectoryW`: `C:\Windows\System32`,
/// wherever Windows is).
pub fn system_directory() -> io::Result<std::path::PathBuf> {
    use std::os::windows::ffi::OsStringExt;
    use windows_sys::Win32::System::SystemInformation::GetSystemDirectoryW;
    let mut buf = vec![0u16; 512];
    // SAFETY: `buf` is valid for its length in UTF-16 units, as passed.
    let n = unsafe { GetSystemDirectoryW(buf.as_mut_ptr(), buf.len() as u32) } as usize;
    if n == 0 || n >= buf.len() {
        return Err(io::Error::last_os_error());
    }
    Ok(std::ffi::OsString::from_wide(&buf[..n]).into())
}

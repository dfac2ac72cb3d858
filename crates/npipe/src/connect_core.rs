//! The client's side of the handshake without I/O: the HELLO it sends, how
//! long it waits for the answer, and what it makes of the REPLY. The
//! engine's `ConnectCore` applies these rules in order; both clients drive
//! it.

use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Result};
use crate::identity::Identity;
use crate::info::{max_instances_from_wire, End, PeerCredentials};
use crate::name::PipeName;
use crate::options::ClientOptions;
use crate::proto::framing;
use crate::proto::handshake::{
    Hello, HelloKind, PipeDescription, Reply, REPLY_MAX, WAIT_DEFAULT, WAIT_FOREVER, WAIT_NONE,
};
use crate::stream_core::Setup;
use crate::types::{PipeType, ReadMode, Wait};

/// How long past its own wait a client gives a server that says nothing.
/// The server decides every outcome and says so; this only bounds a hung one.
const SERVER_SILENCE: Duration = Duration::from_secs(5);
/// The longest server default wait a client expects when it asks for the
/// server's default; a server with a longer one should be waited for with an
/// explicit timeout.
const SERVER_DEFAULT_MAX: Duration = Duration::from_secs(60);
/// Requests up to this size ride in the same packet as HELLO in `call`.
pub(crate) const PIPELINE_MAX: usize = 64 * 1024;

/// The wire value of a wait.
pub(crate) fn wait_ms(wait: Wait) -> u32 {
    match wait {
        Wait::NoWait => WAIT_NONE,
        Wait::ServerDefault => WAIT_DEFAULT,
        Wait::Forever => WAIT_FOREVER,
        // Values that collide with the specials are clamped below them; a
        // zero timeout means "no wait", and any other waits at least 1 ms.
        Wait::Timeout(d) if d.is_zero() => WAIT_NONE,
        Wait::Timeout(d) => d.as_millis().clamp(1, u128::from(WAIT_DEFAULT - 1)) as u32,
    }
}

/// How long to wait for the server's answer before calling it hung: the
/// wait for an instance, and then the silence allowed (5 s, or the read
/// timeout if that is shorter: a live acceptor answers in microseconds).
pub(crate) fn answer_deadline(wait: Wait, read_timeout: Option<Duration>) -> Option<Duration> {
    let silence = read_timeout.map_or(SERVER_SILENCE, |t| t.min(SERVER_SILENCE));
    match wait {
        Wait::NoWait => Some(silence),
        Wait::ServerDefault => Some(SERVER_DEFAULT_MAX + silence),
        Wait::Timeout(d) => Some(d + silence),
        Wait::Forever => None,
    }
}

/// A waiting client's first pause before it tries again for a server to
/// appear, and every pause of a local client's.
pub(crate) const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between a remote client's tries. Each remote try is a
/// TCP connection and a TLS handshake on both the client and the gateway
/// (a local try is one failed `connect`), so a remote client waiting for a
/// pipe doubles its pause from [`RECONNECT_PAUSE`] up to this, rather than
/// hold the gateway to a hundred handshakes a second for as long as it
/// waits.
pub(crate) const REMOTE_RECONNECT_PAUSE_MAX: Duration = Duration::from_millis(500);

/// The tries of a client that also waits for the pipe to exist
/// (`wait_for_server`): the options of each try, and whether a failure is
/// worth another. Both clients drive it with the time.
#[derive(Debug, Clone)]
pub(crate) struct Attempts {
    start: Instant,
    /// How long to keep trying; `None` for ever.
    limit: Option<Duration>,
    /// The pause after the next failure.
    pause: Duration,
    /// The most `pause` grows to: [`RECONNECT_PAUSE`] (no growth) for a
    /// local pipe.
    pause_max: Duration,
}

impl Attempts {
    /// The tries of a client with `opts` starting at `now`, to a remote
    /// pipe if `remote`; `None` if it tries once (it does not wait for the
    /// server, or not at all).
    pub fn new(opts: &ClientOptions, remote: bool, now: Instant) -> Option<Attempts> {
        if !opts.wait_for_server || opts.wait == Wait::NoWait {
            return None;
        }
        let limit = match opts.wait {
            Wait::Timeout(d) => Some(d),
            Wait::ServerDefault => Some(SERVER_DEFAULT_MAX),
            Wait::Forever | Wait::NoWait => None,
        };
        let pause_max = if remote {
            REMOTE_RECONNECT_PAUSE_MAX
        } else {
            RECONNECT_PAUSE
        };
        Some(Attempts {
            start: now,
            limit,
            pause: RECONNECT_PAUSE,
            pause_max,
        })
    }

    /// The options for the try made at `now`: a timeout shrinks by what
    /// has passed.
    pub fn options(&self, opts: &ClientOptions, now: Instant) -> ClientOptions {
        let mut attempt = opts.clone();
        if let (Wait::Timeout(_), Some(limit)) = (opts.wait, self.limit) {
            let left = limit.saturating_sub(now.saturating_duration_since(self.start));
            attempt.wait(Wait::Timeout(left.max(Duration::from_millis(1))));
        }
        attempt
    }

    /// After a try failed with `e` at `now`: how long to pause before the
    /// next, or `None` to give up with `e`. Worth another try while the pipe
    /// is missing, or its server went away mid-handshake, and the wait is
    /// not over (looked at after the failure, not before the try).
    ///
    /// A remote client's pause doubles with each failure, up to
    /// [`REMOTE_RECONNECT_PAUSE_MAX`]; no pause runs past the end of the
    /// wait, so the last try comes when the wait ends, not after it.
    pub fn after_failure(&mut self, e: &Error, now: Instant) -> Option<Duration> {
        if !matches!(e.code(), ErrorCode::FileNotFound | ErrorCode::BrokenPipe) {
            return None;
        }
        let passed = now.saturating_duration_since(self.start);
        let left = match self.limit {
            Some(limit) if passed >= limit => return None,
            Some(limit) => limit - passed,
            None => Duration::MAX,
        };
        let pause = self.pause.min(left);
        self.pause = (self.pause * 2).min(self.pause_max);
        Some(pause)
    }
}

/// What came of a handshake: the server's REPLY (with what was read past
/// it), or, if the server hung up while we were still sending, that send's
/// failure, which says more than the hang-up.
pub(crate) fn settle(
    name: &PipeName,
    answer: Result<(Reply, Vec<u8>)>,
    sent: std::io::Result<()>,
) -> Result<(PipeDescription, Vec<u8>)> {
    let (reply, leftover) = answer.map_err(|e| match &sent {
        Err(s) if e.code() == ErrorCode::BrokenPipe => {
            Error::new(ErrorCode::BrokenPipe, format!("{name}: {s}"))
        }
        _ => e,
    })?;
    let desc = connected(name, reply)?;
    sent.map_err(|e| Error::os(e, &format!("{name}: sending the handshake failed")))?;
    Ok((desc, leftover))
}

/// `CallNamedPipe` on a byte-type pipe.
pub(crate) fn not_a_message_pipe(name: &PipeName) -> Error {
    Error::new(
        ErrorCode::BadPipe,
        format!("{name}: a transaction needs a message-type pipe; this one is byte type"),
    )
}

/// Fails for a name this build cannot reach.
pub(crate) fn check_reachable(name: &PipeName, opts: &ClientOptions) -> Result<()> {
    let Some(host) = name.host() else {
        return Ok(());
    };
    if !cfg!(all(feature = "remote", target_os = "linux")) {
        return Err(Error::new(
            ErrorCode::BadNetPath,
            format!(
                "{name}: remote pipes go through `npipe gateway` on {host}, and this build of \
                 npipe has no remote support (its `remote` feature is off); use a local \
                 name (\\\\.\\pipe\\NAME)"
            ),
        ));
    }
    if opts.expect_server.is_some() {
        return Err(Error::new(
            ErrorCode::InvalidParameter,
            format!(
                "{name}: expect_server checks a local server's kernel credentials; a remote \
                 pipe's gateway is vouched for by its certificate (checked against your CA)"
            ),
        ));
    }
    Ok(())
}

/// Refuses a server that is anyone but `expect_server` asked for, before a
/// byte is sent; `user_name` names a uid for the message.
pub(crate) fn check_server(
    name: &PipeName,
    opts: &ClientOptions,
    cred: Option<PeerCredentials>,
    user_name: impl Fn(u32) -> Option<String>,
) -> Result<()> {
    let Some(expected) = &opts.expect_server else {
        return Ok(());
    };
    let Some(cred) = cred else {
        return Err(Error::new(
            ErrorCode::Other,
            "npipe bug: the server's credentials were not read for expect_server",
        ));
    };
    if expected.local_user() == Some(cred.user) {
        return Ok(());
    }
    let who = |uid: u32| match user_name(uid) {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    let wanted = match expected {
        Identity::Local(user) => format!("the expected {}", who(user.0)),
        Identity::Remote(p) => format!(
            "the expected remote principal {p} (a local pipe's server is always a local user)"
        ),
    };
    Err(Error::new(
        ErrorCode::AccessDenied,
        format!(
            "{name} is served by {} (pid {}), not by {wanted}: refusing to talk to it \
             (someone else may be squatting the name)",
            who(cred.user.0),
            cred.pid,
        ),
    ))
}

/// The bytes a client sends first: HELLO, and the pipelined request if any.
pub(crate) fn opening(
    name: &PipeName,
    opts: &ClientOptions,
    pipelined: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let hello = Hello {
        kind: HelloKind::Connect,
        access: opts.access,
        read_mode: opts.read_mode.unwrap_or(ReadMode::Byte),
        impersonation: opts.impersonation,
        wait_ms: wait_ms(opts.wait),
        max_message: opts.max_message_size,
        pipelined: pipelined.is_some(),
        name: name.canonical().to_string(),
        principal: String::new(),
        computer: String::new(),
        local_user: None,
        local_groups: Vec::new(),
        hand_off: false,
    };
    let mut out = Vec::with_capacity(64 + pipelined.map_or(0, |m| m.len() + 4));
    hello.encode(&mut out).map_err(Error::from)?;
    if let Some(msg) = pipelined {
        out.extend_from_slice(&framing::header(msg.len() as u32));
        out.extend_from_slice(msg);
    }
    Ok(out)
}

/// Looks for a whole REPLY at the front of `buf`; removes it if found.
pub(crate) fn take_reply(buf: &mut Vec<u8>) -> Result<Option<Reply>> {
    if let Some((reply, used)) = Reply::decode(buf).map_err(Error::from)? {
        buf.drain(..used);
        return Ok(Some(reply));
    }
    if buf.len() >= REPLY_MAX {
        return Err(Error::new(
            ErrorCode::BadPipe,
            "the server's reply is too long",
        ));
    }
    Ok(None)
}

/// The server closed the connection before answering.
pub(crate) fn closed_before_reply() -> Error {
    Error::new(
        ErrorCode::BrokenPipe,
        "the server closed the connection without answering (is it shutting down?)",
    )
}

/// The server did not answer in time.
/// A reply `call_async` waited for longer than its read timeout.
#[cfg(feature = "tokio")]
pub(crate) fn no_reply_in_time(limit: Duration) -> Error {
    Error::new(
        ErrorCode::Timeout,
        format!(
            "the server did not reply within the read timeout ({} ms): is it hung?",
            limit.as_millis()
        ),
    )
}

pub(crate) fn silent_server() -> Error {
    Error::new(
        ErrorCode::Timeout,
        "the server accepted the connection but did not answer the handshake (is it hung?)",
    )
}

/// What a REPLY to a connect means: the pipe, or the server's refusal.
pub(crate) fn connected(name: &PipeName, reply: Reply) -> Result<PipeDescription> {
    match reply {
        Reply::Connected(desc) => Ok(desc),
        Reply::Refused { code, reason } => {
            let code = ErrorCode::from_win32(code).unwrap_or(ErrorCode::Other);
            Err(Error::new(code, format!("{name}: {reason}")))
        }
        Reply::Info { .. } => Err(Error::new(
            ErrorCode::BadPipe,
            format!("{name}: the server answered a connect with pipe information"),
        )),
    }
}

/// The client end's setup and read mode from the server's description.
pub(crate) fn client_setup(
    name: &PipeName,
    opts: &ClientOptions,
    desc: PipeDescription,
    peer: Option<PeerCredentials>,
) -> Result<(Setup, ReadMode)> {
    let read_mode = match (opts.read_mode, desc.pipe_type) {
        (Some(ReadMode::Message), PipeType::Byte) => {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!("{name} is a byte-type pipe: it cannot be read in message mode"),
            ))
        }
        (Some(mode), _) => mode,
        (None, PipeType::Byte) => ReadMode::Byte,
        (None, PipeType::Message) => ReadMode::Message,
    };
    let setup = Setup {
        budget: None,
        name: desc.name.into(),
        end: End::Client,
        pipe_type: desc.pipe_type,
        direction: desc.direction,
        access: desc.granted,
        max_instances: max_instances_from_wire(desc.max_instances),
        cur_instances: desc.cur_instances,
        in_buffer: desc.in_buffer,
        out_buffer: desc.out_buffer,
        max_message: opts.max_message_size,
        peer_max_message: desc.max_message,
        peer: peer.map_or_else(Default::default, Into::into),
    };
    Ok((setup, read_mode))
}

/// The client end's setup once the server said OK, and the send buffer
/// size the server's in-buffer hint asks for (applied by the caller).
pub(crate) fn finish(
    name: &PipeName,
    opts: &ClientOptions,
    cred: Option<PeerCredentials>,
    desc: PipeDescription,
) -> Result<(Setup, ReadMode, Option<usize>)> {
    let send_buffer = (desc.in_buffer > 0).then_some(desc.in_buffer as usize);
    let (setup, read_mode) = client_setup(name, opts, desc, cred)?;
    Ok((setup, read_mode, send_buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(wait: Wait) -> ClientOptions {
        let mut o = ClientOptions::new();
        o.wait(wait).wait_for_server(true);
        o
    }

    #[test]
    fn a_client_that_does_not_wait_tries_once() {
        let now = Instant::now();
        assert!(Attempts::new(&ClientOptions::new(), false, now).is_none());
        assert!(Attempts::new(&waiting(Wait::NoWait), false, now).is_none());
        let mut no_server_wait = ClientOptions::new();
        no_server_wait.wait(Wait::Forever);
        assert!(Attempts::new(&no_server_wait, false, now).is_none());
    }

    #[test]
    fn retries_while_the_pipe_is_missing_until_the_wait_is_over() {
        let now = Instant::now();
        let opts = waiting(Wait::Timeout(Duration::from_millis(100)));
        let mut a = Attempts::new(&opts, false, now).unwrap();
        let missing = Error::new(ErrorCode::FileNotFound, "x");
        let denied = Error::new(ErrorCode::AccessDenied, "x");
        assert_eq!(a.after_failure(&missing, now), Some(RECONNECT_PAUSE));
        assert_eq!(a.after_failure(&denied, now), None, "only missing or gone");
        // No pause runs past the end of the wait: 5 ms left, 5 ms paused.
        let near_end = now + Duration::from_millis(95);
        assert_eq!(
            a.after_failure(&missing, near_end),
            Some(Duration::from_millis(5))
        );
        let later = now + Duration::from_millis(100);
        assert_eq!(a.after_failure(&missing, later), None, "the wait is over");
        // Each try waits what is left, at least 1 ms.
        let at = now + Duration::from_millis(60);
        assert_eq!(
            a.options(&opts, at).wait,
            Wait::Timeout(Duration::from_millis(40))
        );
        assert_eq!(
            a.options(&opts, later + Duration::from_secs(1)).wait,
            Wait::Timeout(Duration::from_millis(1))
        );
        let mut forever = Attempts::new(&waiting(Wait::Forever), false, now).unwrap();
        let much_later = now + Duration::from_secs(86_400);
        for _ in 0..5 {
            assert_eq!(
                forever.after_failure(&missing, much_later),
                Some(RECONNECT_PAUSE),
                "a local client's pause stays short"
            );
        }
    }

    /// A remote try costs the gateway a TLS handshake: the pause doubles
    /// up to its bound, and never runs past the end of the wait.
    #[test]
    fn a_remote_client_backs_off_but_tries_again_when_its_wait_ends() {
        let now = Instant::now();
        let missing = Error::new(ErrorCode::FileNotFound, "x");
        let mut forever = Attempts::new(&waiting(Wait::Forever), true, now).unwrap();
        let pauses: Vec<u64> = (0..9)
            .map(|_| forever.after_failure(&missing, now).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 500, 500, 500]);

        let opts = waiting(Wait::Timeout(Duration::from_millis(1000)));
        let mut a = Attempts::new(&opts, true, now).unwrap();
        for _ in 0..6 {
            a.after_failure(&missing, now);
        }
        // 500 ms due, 300 left: the pause ends with the wait.
        let at = now + Duration::from_millis(700);
        assert_eq!(
            a.after_failure(&missing, at),
            Some(Duration::from_millis(300))
        );
        assert_eq!(
            a.after_failure(&missing, now + Duration::from_millis(1000)),
            None
        );
    }

    #[test]
    fn a_send_that_failed_before_the_server_hung_up_is_the_error() {
        let name = PipeName::parse("p").unwrap();
        let hung_up = Err(closed_before_reply());
        let send = Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let e = settle(&name, hung_up, send).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BrokenPipe);
        assert!(e.message().contains("p"), "{e}");
        let refused = Reply::Refused {
            code: ErrorCode::PipeBusy.win32(),
            reason: "busy".into(),
        };
        let e = settle(&name, Ok((refused, Vec::new())), Ok(())).unwrap_err();
        assert_eq!(e.code(), ErrorCode::PipeBusy);
    }
}

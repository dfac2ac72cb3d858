//! The server's verdict on a client's HELLO, and the pipe description it
//! sends back: decisions shared by every front end (blocking, tokio), kept
//! free of I/O so that they are the same everywhere.

use std::time::{Duration, Instant};

use crate::error::ErrorCode;
use crate::identity::{Identity, LocalGroup, LocalUser, RemotePrincipal};
use crate::info::PeerCredentials;
use crate::name::PipeName;
use crate::options::ServerOptions;
use crate::proto::admission::Patience;
use crate::proto::handshake::{
    Hello, HelloKind, PipeDescription, WAIT_DEFAULT, WAIT_FOREVER, WAIT_NONE,
};
use crate::security::{Rights, Subject};
use crate::types::{Access, PipeType};

/// A connecting peer as the kernel describes it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// `SO_PEERCRED`.
    pub cred: PeerCredentials,
    /// `SO_PEERGROUPS`, fetched only when the descriptor names groups.
    pub groups: Vec<u32>,
    /// The uid the server runs as (the default owner).
    pub server_uid: u32,
}

/// What the server does with a HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A query: describe the pipe (with the access a client could have).
    Describe(Access),
    /// A connect that may take an instance, with this access, waiting so long.
    Connect {
        /// The access the client gets.
        granted: Access,
        /// How long it waits for an instance.
        patience: Patience,
    },
    /// Refuse with this code and reason.
    Refuse(ErrorCode, String),
}

/// Judges a HELLO from a peer the kernel identified as `peer` (with its
/// supplementary groups if the descriptor names groups), at `now`, for a
/// server running as `server_uid`.
pub(crate) fn judge(
    opts: &ServerOptions,
    name: &PipeName,
    hello: &Hello,
    peer: &Peer,
    now: Instant,
) -> Verdict {
    let anonymous_query = hello.kind == HelloKind::Query && hello.name.is_empty();
    if hello.name != name.canonical() && !anonymous_query {
        return Verdict::Refuse(
            ErrorCode::FileNotFound,
            format!("this server serves {:?}, not {:?}", name.name(), hello.name),
        );
    }
    let remote = !hello.principal.is_empty() || !hello.computer.is_empty();
    if remote {
        if let Some(refusal) = judge_gateway(opts, hello, peer) {
            return refusal;
        }
    }
    let allowed = opts.direction.client_access();
    let subject = if remote {
        let principal = RemotePrincipal::new(hello.principal.clone());
        match hello.local_user {
            Some(uid) => Subject::remote_as(
                principal,
                LocalUser(uid),
                hello.local_groups.iter().copied().map(LocalGroup),
            ),
            None => Subject::remote(principal),
        }
    } else {
        subject(peer)
    };
    if hello.kind == HelloKind::Query {
        // What this peer could really get: the direction's access as far as
        // the descriptor grants it, not what the pipe offers in general.
        let held = opts
            .security
            .rights_of(&subject, LocalUser(peer.server_uid));
        return match access_within(held, allowed) {
            Some(access) => Verdict::Describe(access),
            None => Verdict::Refuse(ErrorCode::AccessDenied, nothing_granted(&subject)),
        };
    }
    let granted = hello.access.unwrap_or(allowed);
    if !granted.within(allowed) {
        let may = match allowed {
            Access::Read => "only read",
            Access::Write => "only write",
            Access::ReadWrite => "read and write",
        };
        return Verdict::Refuse(
            ErrorCode::AccessDenied,
            format!("the pipe is {:?}: a client may {may}", opts.direction),
        );
    }
    if let Err(e) = opts
        .security
        .check(&subject, granted, LocalUser(peer.server_uid))
    {
        return Verdict::Refuse(e.code(), e.message().to_string());
    }
    if hello.pipelined && !granted.writes() {
        // The request behind the HELLO is a write the grant does not allow:
        // answering it would let a reader write (the server never reads
        // from a client without write access).
        return Verdict::Refuse(
            ErrorCode::AccessDenied,
            "a transaction writes a request, and this client asked for read access only".into(),
        );
    }
    if hello.pipelined && opts.pipe_type == PipeType::Byte {
        return Verdict::Refuse(
            ErrorCode::BadPipe,
            "a transaction needs a message-type pipe; this one is byte type".into(),
        );
    }
    let patience = match hello.wait_ms {
        WAIT_NONE => Patience::None,
        WAIT_FOREVER => Patience::Forever,
        WAIT_DEFAULT => Patience::Until(now + opts.default_timeout),
        ms => Patience::Until(now + Duration::from_millis(ms.into())),
    };
    Verdict::Connect { granted, patience }
}

/// Whether a HELLO that names a remote client is refused: only a gateway
/// the server trusts (by its kernel uid) may name one, it must name a
/// principal, and the pipe may reject remote clients altogether.
fn judge_gateway(opts: &ServerOptions, hello: &Hello, peer: &Peer) -> Option<Verdict> {
    let uid = peer.cred.user.0;
    if !opts.trusts_gateway(uid) {
        return Some(Verdict::Refuse(
            ErrorCode::AccessDenied,
            format!(
                "uid {uid} is not a remote-pipe gateway this server trusts, so it may not \
                 present a remote identity (the server trusts root and the users it names \
                 with ServerOptions::trust_gateway or npipe serve --trust-gateway)"
            ),
        ));
    }
    if hello.principal.is_empty() {
        return Some(Verdict::Refuse(
            ErrorCode::BadPipe,
            "a remote client's HELLO names a computer but no principal".into(),
        ));
    }
    if hello.local_user == Some(0) && uid != 0 {
        // Whom a server impersonates is the gateway's to say: a gateway
        // that is not root itself may not make it act as root.
        return Some(Verdict::Refuse(
            ErrorCode::AccessDenied,
            format!("gateway uid {uid} may not map a remote client to root"),
        ));
    }
    if opts.reject_remote_clients {
        return Some(Verdict::Refuse(
            ErrorCode::AccessDenied,
            "this pipe rejects remote clients (PIPE_REJECT_REMOTE_CLIENTS)".into(),
        ));
    }
    None
}

/// Judges a peer at accept, from its kernel credentials alone: `Some(reason)`
/// if the descriptor grants it nothing, so that it is refused before it can
/// hold anything on the server (a socket, a handshake slot, a buffer).
///
/// A trusted gateway passes whatever the descriptor says of its own user:
/// it connects for remote clients, who are judged by their principal when
/// its HELLO names them (and as the gateway's own user when it names none).
pub(crate) fn refuse_at_accept(opts: &ServerOptions, peer: &Peer) -> Option<String> {
    if opts.trusts_gateway(peer.cred.user.0) {
        return None;
    }
    let held = opts
        .security
        .rights_of(&subject(peer), LocalUser(peer.server_uid));
    if held.contains(Rights::READ) || held.contains(Rights::WRITE) {
        None
    } else {
        Some(nothing_granted(&subject(peer)))
    }
}

fn subject(peer: &Peer) -> Subject {
    Subject::local(
        peer.cred.user,
        peer.cred.group,
        peer.groups.iter().copied().map(LocalGroup),
    )
}

fn nothing_granted(who: &Subject) -> String {
    match &who.identity {
        Identity::Local(user) => format!(
            "the pipe's security descriptor grants uid {} no access",
            user.0
        ),
        Identity::Remote(p) => {
            format!("the pipe's security descriptor grants remote client {p} no access")
        }
    }
}

/// The part of `allowed` (what the direction offers) that `held` (what the
/// descriptor grants) covers; `None` if no part.
fn access_within(held: Rights, allowed: Access) -> Option<Access> {
    let reads = allowed.reads() && held.contains(Rights::READ);
    let writes = allowed.writes() && held.contains(Rights::WRITE);
    (reads || writes).then(|| Access::of(reads, writes))
}

/// The pipe as the server describes it in OK and INFO replies.
pub(crate) fn description(
    opts: &ServerOptions,
    name: &PipeName,
    granted: Access,
    active: u32,
    waiting: usize,
) -> PipeDescription {
    PipeDescription {
        pipe_type: opts.pipe_type,
        direction: opts.direction,
        granted,
        max_instances: opts.max_instances,
        cur_instances: active,
        in_buffer: opts.in_buffer_size,
        out_buffer: opts.out_buffer_size,
        max_message: opts.max_message_size,
        default_timeout_ms: millis(opts.default_timeout),
        handshake_timeout_ms: millis(opts.handshake_timeout),
        waiting: u32::try_from(waiting).unwrap_or(u32::MAX),
        name: name.name().to_string(),
        shared_memory: false,
        socket_wakes: false,
        handed_over: false,
        late_offers: false,
    }
}

/// Whether the server takes a connection its gateway offers to hand over:
/// only a HELLO `judge` let connect with a remote identity (so from a
/// gateway the server trusts) can offer, not one with a request behind it
/// (that is on this socket, not the client's), and only where remote pipes
/// are built in.
pub(crate) fn takes_hand_off(opts: &ServerOptions, hello: &Hello) -> bool {
    cfg!(all(feature = "remote", target_os = "linux"))
        && opts.remote_hand_off
        && hello.hand_off
        && !hello.pipelined
        && !hello.principal.is_empty()
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX - 2)) as u32
}

/// The refusal sent when no instance is free and the client will not wait.
pub(crate) const BUSY_REASON: &str =
    "all pipe instances are busy (ask to wait, like WaitNamedPipe)";
/// The refusal sent when a waiter's time runs out.
pub(crate) const TIMEOUT_REASON: &str =
    "every instance stayed busy for as long as the client would wait";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Direction, ImpersonationLevel, ReadMode};

    fn hello(name: &str) -> Hello {
        Hello {
            kind: HelloKind::Connect,
            access: None,
            read_mode: ReadMode::Message,
            impersonation: ImpersonationLevel::Impersonation,
            wait_ms: WAIT_NONE,
            max_message: 1024,
            pipelined: false,
            name: name.into(),
            principal: String::new(),
            computer: String::new(),
            local_user: None,
            local_groups: Vec::new(),
            hand_off: false,
        }
    }

    const ME: Peer = Peer {
        cred: PeerCredentials {
            pid: 1,
            user: crate::LocalUser(0),
            group: crate::LocalGroup(0),
        },
        groups: Vec::new(),
        server_uid: 0,
    };

    #[test]
    fn direction_decides_access() {
        let name = PipeName::parse("Pipe").unwrap();
        let mut opts = ServerOptions::new();
        opts.direction(Direction::Inbound);
        let now = Instant::now();
        let v = judge(&opts, &name, &hello("pipe"), &ME, now);
        assert_eq!(
            v,
            Verdict::Connect {
                granted: Access::Write,
                patience: Patience::None
            }
        );
        let mut h = hello("pipe");
        h.access = Some(Access::Read);
        assert!(matches!(
            judge(&opts, &name, &h, &ME, now),
            Verdict::Refuse(ErrorCode::AccessDenied, _)
        ));
    }

    #[test]
    fn names_and_waits() {
        let name = PipeName::parse("Pipe").unwrap();
        let opts = ServerOptions::new();
        let now = Instant::now();
        assert!(matches!(
            judge(&opts, &name, &hello("other"), &ME, now),
            Verdict::Refuse(ErrorCode::FileNotFound, _)
        ));
        let mut h = hello("pipe");
        h.wait_ms = WAIT_DEFAULT;
        assert_eq!(
            judge(&opts, &name, &h, &ME, now),
            Verdict::Connect {
                granted: Access::ReadWrite,
                patience: Patience::Until(now + Duration::from_millis(50))
            }
        );
        h.kind = HelloKind::Query;
        h.name.clear();
        assert_eq!(
            judge(&opts, &name, &h, &ME, now),
            Verdict::Describe(Access::ReadWrite)
        );
    }

    #[test]
    fn the_descriptor_is_checked_for_the_access_granted() {
        let name = PipeName::parse("p").unwrap();
        let opts = ServerOptions::new(); // default: everyone read
        let nobody = Peer {
            cred: PeerCredentials {
                pid: 9,
                user: crate::LocalUser(65534),
                group: crate::LocalGroup(65534),
            },
            groups: Vec::new(),
            server_uid: 0,
        };
        let now = Instant::now();
        assert!(matches!(
            judge(&opts, &name, &hello("p"), &nobody, now),
            Verdict::Refuse(ErrorCode::AccessDenied, _)
        ));
        let mut h = hello("p");
        h.access = Some(Access::Read);
        assert!(matches!(
            judge(&opts, &name, &h, &nobody, now),
            Verdict::Connect { .. }
        ));
    }

    fn other(uid: u32) -> Peer {
        Peer {
            cred: PeerCredentials {
                pid: 9,
                user: crate::LocalUser(uid),
                group: crate::LocalGroup(uid),
            },
            groups: Vec::new(),
            server_uid: 0,
        }
    }

    #[test]
    fn a_pipelined_request_needs_write_access() {
        let name = PipeName::parse("p").unwrap();
        let opts = ServerOptions::new(); // default: everyone read
        let mut h = hello("p");
        h.access = Some(Access::Read);
        h.pipelined = true;
        for peer in [&ME, &other(65534)] {
            assert!(matches!(
                judge(&opts, &name, &h, peer, Instant::now()),
                Verdict::Refuse(ErrorCode::AccessDenied, _)
            ));
        }
        h.access = Some(Access::ReadWrite);
        assert!(matches!(
            judge(&opts, &name, &h, &ME, Instant::now()),
            Verdict::Connect { .. }
        ));
    }

    #[test]
    fn a_query_reports_the_grant_the_peer_really_has() {
        let name = PipeName::parse("p").unwrap();
        let mut h = hello("p");
        h.kind = HelloKind::Query;
        let now = Instant::now();
        let opts = ServerOptions::new(); // default: everyone read
        assert_eq!(
            judge(&opts, &name, &h, &other(65534), now),
            Verdict::Describe(Access::Read)
        );
        assert_eq!(
            judge(&opts, &name, &h, &ME, now),
            Verdict::Describe(Access::ReadWrite)
        );
        let mut opts = ServerOptions::new();
        opts.security(deny_nobody(Rights::WRITE));
        assert_eq!(
            judge(&opts, &name, &h, &other(65534), now),
            Verdict::Describe(Access::Read)
        );
        opts.security(deny_nobody(Rights::FULL));
        assert!(matches!(
            judge(&opts, &name, &h, &other(65534), now),
            Verdict::Refuse(ErrorCode::AccessDenied, _)
        ));
    }

    /// Everyone full access, less `rights` for uid 65534 (built, not
    /// parsed: uids in the text form are Unix's).
    fn deny_nobody(rights: Rights) -> crate::SecurityDescriptor {
        crate::SecurityDescriptor::empty()
            .allow(crate::Trustee::Everyone, Rights::FULL)
            .deny(crate::Trustee::User(LocalUser(65534)), rights)
    }

    #[test]
    fn a_peer_granted_nothing_is_refused_at_accept() {
        let mut opts = ServerOptions::new();
        assert_eq!(refuse_at_accept(&opts, &other(65534)), None);
        opts.security(deny_nobody(Rights::FULL));
        let why = refuse_at_accept(&opts, &other(65534)).unwrap();
        assert!(why.contains("65534"), "{why}");
        assert_eq!(refuse_at_accept(&opts, &other(1000)), None);
        assert_eq!(refuse_at_accept(&opts, &ME), None);
        opts.security(crate::SecurityDescriptor::current_user_only());
        assert!(refuse_at_accept(&opts, &other(1000)).is_some());
    }
}

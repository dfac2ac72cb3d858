//! What a listener shares with its acceptor and its server ends, whatever
//! front end drives them: the pipe's name and options, the queue of
//! connected clients waiting for `accept`, the instance counts, the memory
//! budget, and why the acceptor stopped if it did. Each front end adds only
//! how it wakes its acceptor and its `accept` callers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::budget::MemoryBudget;
use crate::engine::acceptor::AcceptorCore;
use crate::error::{Error, ErrorCode, Result};
use crate::info::PeerCredentials;
use crate::info::PipeInfo;
use crate::instance_counts::InstanceCounts;
use crate::name::PipeName;
use crate::namespace::{self, Namespace, Published, ServerSocket};
use crate::options::ServerOptions;
use crate::peer_process::ClientProcess;
use crate::proto::handshake::Hello;
use crate::remote_peer::RemotePeer;
use crate::server_instance::{InstancePool, ServerInstance};
use crate::stream_core::{EndCore, Setup};
use crate::sys::Socket;
use crate::types::Access;

/// A client the acceptor connected (told OK), waiting for `accept`.
pub(crate) struct Ready {
    pub socket: Socket,
    /// What the client sent behind its HELLO.
    pub leftover: Vec<u8>,
    pub cred: PeerCredentials,
    /// The connecting process, as far as it was captured at accept.
    pub process: ClientProcess,
    pub hello: Hello,
    pub granted: Access,
    /// Instances in use when it connected, the one it took included.
    pub cur_instances: u32,
    /// The client's shared memory and its rings' capacity, if the acceptor
    /// took its offer (and said so in the OK).
    pub shm: Option<crate::shm::transport::Rings>,
    /// The OK said this server takes shared memory offered in mid-stream
    /// (PROTOCOL §6d): the end reads its socket watching for the offer.
    pub late_offers: bool,
    /// The remote client the HELLO names, if the acceptor looked its
    /// mapped user up already (the tokio one does, off the runtime's
    /// threads); else `open_end` does.
    pub remote: Option<RemotePeer>,
    /// The OK took a gateway's offer to hand the connection over (what
    /// the engine decided, as the OK said): its HAND-OFF is read before the
    /// end is made (see `remote::handed`).
    #[cfg(feature = "remote")]
    pub handed_over: bool,
    /// What the gateway said after that OK (`None` until read).
    #[cfg(feature = "remote")]
    pub settled: Option<crate::remote::handed::Settled>,
}

impl Ready {
    /// Reads the HAND-OFF on tokio's reactor (at most
    /// `remote::handed::HAND_OFF_WAIT`).
    #[cfg(all(feature = "remote", feature = "tokio"))]
    pub async fn settle_async(&mut self) {
        use crate::remote::handed;
        let deadline = std::time::Instant::now() + handed::HAND_OFF_WAIT;
        let sender = self.cred.user.0;
        self.settled = Some(handed::receive_async(&self.socket, sender, deadline).await);
    }

    /// Reads the HAND-OFF, blocking this thread (at most
    /// `remote::handed::HAND_OFF_WAIT`).
    #[cfg(feature = "remote")]
    pub fn settle_blocking(&mut self) {
        use crate::remote::handed;
        let deadline = std::time::Instant::now() + handed::HAND_OFF_WAIT;
        let sender = self.cred.user.0;
        self.settled = Some(handed::receive_blocking(&self.socket, sender, deadline));
    }
}

/// What a server end's data runs on.
#[derive(Debug)]
pub(crate) enum Carrier {
    /// The connection's socket.
    Socket(Socket),
    /// A remote client's TLS connection, handed over by its gateway.
    #[cfg(feature = "remote")]
    Handed(Box<crate::remote::tls_transport::TlsTransport>),
}

/// The carrier after the gateway's word: the handed-over connection, or
/// the socket (for a hand-over that went wrong, shut, so the end sees its
/// client gone rather than the gateway's stray bytes, with why).
#[cfg(feature = "remote")]
fn carrier(
    socket: Socket,
    settled: Option<crate::remote::handed::Settled>,
    hello: &Hello,
    granted: Access,
) -> (Carrier, Option<String>) {
    use crate::remote::handed::{self, Settled};
    let broken = |socket: Socket, why: String| {
        let _ = socket.shutdown_both();
        (
            Carrier::Socket(socket),
            Some(format!("the gateway's hand-over failed: {why}")),
        )
    };
    match settled {
        None => (Carrier::Socket(socket), None),
        Some(Settled::Relayed) => {
            // Held to its grant now, as the OK did not (the HAND-OFF came
            // on this socket).
            crate::fresh_connection::fence_to_grant(&socket, granted, &mut Vec::new());
            (Carrier::Socket(socket), None)
        }
        Some(Settled::Handed(tcp, keys)) => {
            let peer = format!("remote client {} at {}", hello.principal, hello.computer);
            match handed::transport(tcp, &keys, socket, peer) {
                Ok(t) => (Carrier::Handed(Box::new(t)), None),
                Err((socket, why)) => broken(socket, why),
            }
        }
        Some(Settled::Broken(why)) => broken(socket, why),
    }
}

/// The state every front end's listener shares with its acceptor.
pub(crate) struct ListenerState {
    pub name: PipeName,
    /// The name as each connection's `GetNamedPipeInfo` gives it, shared
    /// by them all (an idle connection holds no copy of its own).
    info_name: Arc<str>,
    pub opts: ServerOptions,
    /// Connected clients, oldest first.
    pub ready: Mutex<VecDeque<Ready>>,
    /// Instances in use, and those given back since the acceptor last looked.
    pub instances: InstanceCounts,
    /// Set by the acceptor if it stops on an error.
    pub failed: Mutex<Option<String>>,
    /// The user the server runs as: the descriptor's default owner.
    pub server_uid: u32,
    /// Memory all connections may hold in partially received messages.
    pub budget: Arc<MemoryBudget>,
}

impl std::fmt::Debug for ListenerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerState")
            .field("name", &self.name.to_string())
            .finish_non_exhaustive()
    }
}

impl ListenerState {
    pub fn new(name: PipeName, opts: ServerOptions, server_uid: u32) -> ListenerState {
        let budget = Arc::new(MemoryBudget::new(opts.memory_budget, server_uid));
        ListenerState {
            info_name: name.name().into(),
            name,
            opts,
            ready: Mutex::new(VecDeque::new()),
            instances: InstanceCounts::new(),
            failed: Mutex::new(None),
            server_uid,
            budget,
        }
    }

    /// The pipe as the server sees it (`GetNamedPipeInfo`).
    pub fn info(&self) -> PipeInfo {
        let active = self.instances.active_now();
        crate::info::listener_info(&self.opts, &self.name, active)
    }

    /// Why `accept` can no longer succeed, if the acceptor stopped.
    pub fn stopped(&self) -> Result<()> {
        match self.failed.lock().expect("poisoned").as_ref() {
            Some(msg) => Err(Error::new(
                ErrorCode::Other,
                format!("the pipe stopped: {msg}"),
            )),
            None => Ok(()),
        }
    }

    /// Records why the acceptor stopped (the first reason stays).
    pub fn fail(&self, why: String) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.get_or_insert(why);
    }

    /// A connected client's server end but for the front end's I/O: its
    /// carrier (its socket, or a handed-over TLS connection), its reads'
    /// and writes' state, and the instance it holds (given back to `pool`
    /// when dropped).
    pub fn open_end(
        &self,
        pool: Arc<dyn InstancePool>,
        ready: Ready,
    ) -> (Carrier, EndCore, ServerInstance) {
        debug_assert!(
            ready.shm.is_none(),
            "the caller takes the shared memory first"
        );
        // Past the HELLO a client hands the server no descriptor, unless
        // the server takes a late offer (which refuses them once taken).
        if !ready.late_offers {
            ready.socket.refuse_descriptors();
        }
        #[cfg(feature = "remote")]
        let (carrier, broken) = carrier(ready.socket, ready.settled, &ready.hello, ready.granted);
        #[cfg(not(feature = "remote"))]
        let (carrier, broken) = (Carrier::Socket(ready.socket), None);
        // A remote client is who its gateway named, not the gateway.
        let remote = match ready.remote {
            Some(remote) => Some(remote),
            None => RemotePeer::from_hello(&ready.hello),
        };
        let cred = match &remote {
            Some(r) => r.credentials(ready.cred.pid),
            None => ready.cred,
        };
        let setup = Setup::for_server(
            &self.opts,
            Arc::clone(&self.info_name),
            ready.granted,
            ready.cur_instances,
            ready.hello.max_message,
            cred,
            Arc::clone(&self.budget),
        );
        let instance = ServerInstance::new(pool, ready.hello.impersonation, ready.process, remote);
        let mut end = EndCore::new(setup, self.opts.effective_read_mode(), ready.leftover);
        if let Some(why) = broken {
            end.broken_because(why);
        }
        (carrier, end, instance)
    }

    /// The acceptor's state machine for this pipe.
    pub fn acceptor_core(&self) -> AcceptorCore {
        AcceptorCore::new(self.name.clone(), self.opts.clone(), self.server_uid)
    }
}

/// The pipe's name in the namespace, held while its listener lives.
#[derive(Debug)]
pub(crate) struct Publication {
    namespace: Namespace,
    published: Published,
}

impl Publication {
    /// Creates the pipe's listening socket under its name; returns it with
    /// the user the server runs as.
    pub fn create(name: &PipeName, opts: &ServerOptions) -> Result<(Publication, Socket, u32)> {
        let ServerSocket {
            namespace,
            socket,
            published,
            server_uid,
        } = namespace::create_server_socket(name, opts)?;
        let publication = Publication {
            namespace,
            published,
        };
        Ok((publication, socket, server_uid))
    }

    /// Removes the name (if it is still ours).
    pub fn remove(&self) {
        self.namespace.remove(&self.published);
    }
}

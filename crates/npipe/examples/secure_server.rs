//! A pipe only its own user may open, a server that knows who called from
//! the kernel, and impersonation of that caller on one thread.
//!
//! ```text
//! cargo run -p npipe --example secure_server
//! ```
//!
//! The security descriptor is .NET's `CurrentUserOnly` (only the server's
//! user may connect); `SecurityDescriptor::parse("allow user:alice=rw")`
//! and the builder methods make others. The client demands that the server
//! runs as the user it expects (against pipe squatting). The server reads
//! the client's pid and user from `SO_PEERCRED`, never from what the client
//! says, and runs a closure as the client (`ImpersonateNamedPipeClient` ...
//! `RevertToSelf`): only the calling thread changes identity.

use std::time::Duration;

use npipe::unix::{ClientPipeExt, ServerPipeExt};
use npipe::{ClientOptions, SecurityDescriptor, ServerOptions, Wait};

fn main() -> npipe::Result<()> {
    let name = format!("secure-{}", std::process::id());
    let me = rustix::process::geteuid().as_raw();

    let listener = ServerOptions::new()
        .security(SecurityDescriptor::current_user_only())
        .first_instance(true) // FILE_FLAG_FIRST_PIPE_INSTANCE: no squatter got here first
        .create(name.as_str())?;

    let client_name = name.clone();
    let client = std::thread::spawn(move || -> npipe::Result<()> {
        let mut pipe = ClientOptions::new()
            .expect_server_user(me)
            .wait(Wait::Timeout(Duration::from_secs(5)))
            .open(client_name.as_str())?;
        println!(
            "client: connected to server pid {} running as uid {}",
            pipe.server_process_id(),
            pipe.server_uid()
        );
        let reply = pipe.transact(b"who am I?")?;
        println!(
            "client: the server says: {}",
            String::from_utf8_lossy(&reply)
        );
        Ok(())
    });

    let mut pipe = listener.accept()?;
    let request = pipe.recv_message()?;
    println!(
        "server: {:?} from pid {} (uid {}, user {}, session {:?})",
        String::from_utf8_lossy(&request),
        pipe.client_process_id(),
        pipe.client_uid(),
        pipe.client_user_name().unwrap_or_else(|| "?".into()),
        pipe.client_session_id()
    );
    // ImpersonateNamedPipeClient: this thread, and only it, acts as the
    // client until the closure returns (RevertToSelf).
    let acting_as = pipe.run_as_client(|| rustix::process::geteuid().as_raw())?;
    let answer = format!(
        "you are uid {} ({}); while impersonating you this thread ran as uid {acting_as}",
        pipe.client_uid(),
        pipe.impersonation_user_name()?
    );
    pipe.write_message(answer.as_bytes())?;
    client.join().expect("the client thread panicked")
}

//! The protocol's sequences as state machines with no I/O (quinn-proto's
//! way): front ends feed them what happened and the time, and do what they
//! answer. `proto` holds the wire format and the smallest rules; the engine
//! holds the order in which a server or a client applies them.

pub(crate) mod acceptor;
pub(crate) mod connect;
pub(crate) mod ticket_map;

#[cfg(test)]
mod sim;

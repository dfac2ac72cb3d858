//! Handshake v1: the client's HELLO and the server's REPLY, byte for byte as
//! `docs/PROTOCOL.md` specifies. Pure functions over byte slices.
//!
//! Decoders take whatever bytes have arrived and answer "need more", "here it
//! is and this many bytes were used", or an error. They check every length
//! against its bound before looking further, and reject a bad magic as soon as
//! its first byte is wrong, so a peer sending garbage is told at once.

use super::{ProtoError, MAGIC, VERSION};
use crate::types::{Access, Direction, ImpersonationLevel, PipeType, ReadMode};

/// Most bytes a pipe name may take in UTF-8 (256 characters of up to 4 bytes).
pub const MAX_NAME_BYTES: usize = 1024;
/// Most bytes of a remote principal or computer name.
pub const MAX_PRINCIPAL_BYTES: usize = 256;
/// Most bytes of a refusal's explanation.
pub const MAX_REASON_BYTES: usize = 512;

/// Fixed part of HELLO.
pub const HELLO_FIXED: usize = 24;
/// Most groups a gateway may send for the local user it mapped a remote
/// principal to (the user's primary group among them).
pub const MAX_LOCAL_GROUPS: usize = 256;
/// The longest HELLO there can be (with a gateway's local user and its
/// groups).
pub const HELLO_MAX: usize =
    HELLO_FIXED + MAX_NAME_BYTES + 2 * MAX_PRINCIPAL_BYTES + 4 + 2 + 4 * MAX_LOCAL_GROUPS;
/// HELLO flag bit 0: a pipelined framed message follows.
const FLAG_PIPELINED: u8 = 1;
/// HELLO flag bit 1: a u32 local uid follows the strings (gateway only).
const FLAG_LOCAL_USER: u8 = 2;
/// HELLO flag bit 2: after the local uid, a u16 count and that many u32
/// gids, the local user's groups (gateway only, with bit 1).
const FLAG_LOCAL_GROUPS: u8 = 4;
/// Flag: the gateway offers to hand the connection over (PROTOCOL §6c);
/// only with a principal, only for a connect.
const FLAG_HAND_OFF: u8 = 8;
/// Fixed part of a REPLY (status and code).
pub const REPLY_FIXED: usize = 12;
/// Fixed part of the pipe description that follows an OK or INFO status.
const DESC_FIXED: usize = 38;
/// Most bytes of a security descriptor's text an INFO reply carries.
pub const MAX_SECURITY_BYTES: usize = 1024;
/// The longest REPLY there can be: an INFO with the longest name and
/// descriptor (a refusal is shorter).
pub const REPLY_MAX: usize = REPLY_FIXED + DESC_FIXED + MAX_NAME_BYTES + 2 + MAX_SECURITY_BYTES;

/// The wait value meaning "no wait".
pub const WAIT_NONE: u32 = 0;
/// The wait value meaning "the server's default".
pub const WAIT_DEFAULT: u32 = u32::MAX - 1;
/// The wait value meaning "forever".
pub const WAIT_FOREVER: u32 = u32::MAX;

/// What the client wants from this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloKind {
    /// Take an instance and talk.
    Connect,
    /// Only describe the pipe (for listings); takes no instance.
    Query,
}

/// The client's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Connect or query.
    pub kind: HelloKind,
    /// The access asked for; `None` means "whatever the direction allows".
    pub access: Option<Access>,
    /// The client's read mode (informational; the client enforces it).
    pub read_mode: ReadMode,
    /// What the server may do with the client's identity.
    pub impersonation: ImpersonationLevel,
    /// Wait in milliseconds, or one of `WAIT_NONE`, `WAIT_DEFAULT`, `WAIT_FOREVER`.
    pub wait_ms: u32,
    /// The largest message the client accepts.
    pub max_message: u32,
    /// A framed message follows the HELLO (a pipelined `transact`); the server
    /// refuses this on a byte-type pipe.
    pub pipelined: bool,
    /// The canonical pipe name the client means (catches hashed-name
    /// collisions). A query may leave it empty to ask what is served there.
    pub name: String,
    /// The remote principal, set only by the gateway.
    pub principal: String,
    /// The remote computer name, set only by the gateway.
    pub computer: String,
    /// The local user a gateway mapped the remote principal to (the user
    /// the server impersonates for it), set only by the gateway and only
    /// with a principal.
    pub local_user: Option<u32>,
    /// That local user's groups, its primary group first, as the gateway
    /// read them (at most [`MAX_LOCAL_GROUPS`]); set only with
    /// `local_user`. Empty from an older gateway.
    pub local_groups: Vec<u32>,
    /// The gateway offers to hand this connection over once the server
    /// says OK (PROTOCOL §6c): set only by a gateway, only with a
    /// principal, only for a connect.
    pub hand_off: bool,
}

/// The pipe as the server describes it in OK and INFO replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeDescription {
    /// Byte or message.
    pub pipe_type: PipeType,
    /// Inbound, outbound, duplex (the server's view).
    pub direction: Direction,
    /// The access granted to this client (for INFO: what a client could get).
    pub granted: Access,
    /// Instance limit, 255 = unlimited.
    pub max_instances: u32,
    /// Instances in use, this one included.
    pub cur_instances: u32,
    /// Server's in-buffer hint.
    pub in_buffer: u32,
    /// Server's out-buffer hint.
    pub out_buffer: u32,
    /// The largest message the server accepts.
    pub max_message: u32,
    /// The server's default wait in milliseconds.
    pub default_timeout_ms: u32,
    /// The handshake timeout in milliseconds.
    pub handshake_timeout_ms: u32,
    /// Clients waiting for an instance.
    pub waiting: u32,
    /// The pipe's name as the server created it.
    pub name: String,
    /// OK only: the server took the shared-memory region the client sent
    /// with its HELLO, and the data goes through it from here on (REPLY
    /// byte 6, bit 0). Always `false` in an INFO reply.
    pub shared_memory: bool,
    /// OK only, with `shared_memory`: the server sends a byte on the
    /// socket to a client end asleep that way (byte 6, bit 1; PROTOCOL.md
    /// §6a), as a tokio client needs. Every server that sets bit 0 sets
    /// this one too; one from before the rule sets bit 0 alone.
    pub socket_wakes: bool,
    /// OK only: the server took its gateway's offer to hand the
    /// connection over; a HAND-OFF follows (byte 6, bit 2; PROTOCOL §6c).
    /// A client ignores it.
    pub handed_over: bool,
    /// OK only: the server takes a shared-memory region the client offers
    /// later, in mid-stream, once the connection has proved busy (byte 6,
    /// bit 3; PROTOCOL §6d). A server sets it only where it did not take an
    /// offer with the HELLO; a client from before it ignores the bit.
    pub late_offers: bool,
}

impl PipeDescription {
    /// Says in the OK whether the server took the client's shared memory
    /// (and so, being of this version, wakes it through the socket).
    pub fn rings_taken(&mut self, taken: bool) {
        self.shared_memory = taken;
        self.socket_wakes = taken;
    }
}

/// The server's answer to HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An instance took the client.
    Connected(PipeDescription),
    /// Answer to a query: the pipe, and its security descriptor's text
    /// (which every peer a query is answered for may see, as Windows'
    /// read and write access both include `READ_CONTROL`).
    Info {
        /// The pipe, as a client could get it.
        desc: PipeDescription,
        /// The descriptor, in its text form (cut at
        /// [`MAX_SECURITY_BYTES`]).
        security: String,
    },
    /// Refused, with the Win32 code and a reason for humans.
    Refused {
        /// A Win32 error number (`ERROR_PIPE_BUSY`, `ERROR_ACCESS_DENIED`, ...).
        code: u32,
        /// Why, for the user.
        reason: String,
    },
}

const STATUS_CONNECTED: u8 = 0;
const STATUS_INFO: u8 = 1;
const STATUS_REFUSED: u8 = 2;

fn access_bits(a: Option<Access>) -> u8 {
    match a {
        None => 0,
        Some(Access::Read) => 1,
        Some(Access::Write) => 2,
        Some(Access::ReadWrite) => 3,
    }
}

fn access_from_bits(b: u8, field: &'static str) -> Result<Option<Access>, ProtoError> {
    Ok(match b {
        0 => None,
        1 => Some(Access::Read),
        2 => Some(Access::Write),
        3 => Some(Access::ReadWrite),
        v => {
            return Err(ProtoError::BadValue {
                field,
                value: v.into(),
            })
        }
    })
}

/// Checks what has arrived of the magic and version, so garbage and foreign
/// versions are refused without waiting for more bytes.
fn check_preamble(buf: &[u8]) -> Result<(), ProtoError> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Err(ProtoError::BadMagic);
    }
    if buf.len() > MAGIC.len() && buf[MAGIC.len()] != VERSION {
        return Err(ProtoError::BadVersion(buf[MAGIC.len()]));
    }
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn bounded_len(len: u16, max: usize, field: &'static str) -> Result<usize, ProtoError> {
    let len = usize::from(len);
    if len > max {
        return Err(ProtoError::TooLong { field, len, max });
    }
    Ok(len)
}

fn utf8(bytes: &[u8], field: &'static str) -> Result<String, ProtoError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| ProtoError::BadUtf8(field))
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

fn str_len(s: &str, max: usize, field: &'static str) -> Result<u16, ProtoError> {
    if s.len() > max {
        return Err(ProtoError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(s.len() as u16)
}

impl Hello {
    /// Appends the encoded HELLO to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        let name_len = str_len(&self.name, MAX_NAME_BYTES, "name")?;
        let principal_len = str_len(&self.principal, MAX_PRINCIPAL_BYTES, "principal")?;
        let computer_len = str_len(&self.computer, MAX_PRINCIPAL_BYTES, "computer")?;
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(match self.kind {
            HelloKind::Connect => 1,
            HelloKind::Query => 2,
        });
        out.push(access_bits(self.access));
        out.push(match self.read_mode {
            ReadMode::Byte => 0,
            ReadMode::Message => 1,
        });
        out.push(match self.impersonation {
            ImpersonationLevel::Identification => 1,
            ImpersonationLevel::Impersonation => 2,
        });
        let mut flags = 0;
        if self.pipelined {
            flags |= FLAG_PIPELINED;
        }
        if self.local_user.is_some() {
            flags |= FLAG_LOCAL_USER;
        }
        if self.hand_off {
            if self.principal.is_empty() || self.kind != HelloKind::Connect {
                return Err(ProtoError::BadValue {
                    field: "flags",
                    value: FLAG_HAND_OFF.into(),
                });
            }
            flags |= FLAG_HAND_OFF;
        }
        if !self.local_groups.is_empty() {
            if self.local_user.is_none() || self.local_groups.len() > MAX_LOCAL_GROUPS {
                return Err(ProtoError::BadValue {
                    field: "local groups",
                    value: self.local_groups.len() as u64,
                });
            }
            flags |= FLAG_LOCAL_GROUPS;
        }
        out.push(flags);
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&self.wait_ms.to_le_bytes());
        out.extend_from_slice(&self.max_message.to_le_bytes());
        out.extend_from_slice(&principal_len.to_le_bytes());
        out.extend_from_slice(&computer_len.to_le_bytes());
        push_str(out, &self.name);
        push_str(out, &self.principal);
        push_str(out, &self.computer);
        if let Some(uid) = self.local_user {
            out.extend_from_slice(&uid.to_le_bytes());
        }
        if !self.local_groups.is_empty() {
            out.extend_from_slice(&(self.local_groups.len() as u16).to_le_bytes());
            for gid in &self.local_groups {
                out.extend_from_slice(&gid.to_le_bytes());
            }
        }
        Ok(())
    }

    /// Decodes a HELLO from the start of `buf`: `Ok(None)` if more bytes are
    /// needed, else the HELLO and how many bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(Hello, usize)>, ProtoError> {
        check_preamble(buf)?;
        if buf.len() < HELLO_FIXED {
            return Ok(None);
        }
        let kind = match buf[5] {
            1 => HelloKind::Connect,
            2 => HelloKind::Query,
            v => {
                return Err(ProtoError::BadValue {
                    field: "kind",
                    value: v.into(),
                })
            }
        };
        let access = access_from_bits(buf[6], "access")?;
        let read_mode = match buf[7] {
            0 => ReadMode::Byte,
            1 => ReadMode::Message,
            v => {
                return Err(ProtoError::BadValue {
                    field: "read mode",
                    value: v.into(),
                })
            }
        };
        let impersonation = match buf[8] {
            1 => ImpersonationLevel::Identification,
            2 => ImpersonationLevel::Impersonation,
            v => {
                return Err(ProtoError::BadValue {
                    field: "impersonation level",
                    value: v.into(),
                })
            }
        };
        if buf[9] & !(FLAG_PIPELINED | FLAG_LOCAL_USER | FLAG_LOCAL_GROUPS | FLAG_HAND_OFF) != 0 {
            return Err(ProtoError::BadValue {
                field: "flags",
                value: buf[9].into(),
            });
        }
        let pipelined = buf[9] & FLAG_PIPELINED != 0;
        let has_local_user = buf[9] & FLAG_LOCAL_USER != 0;
        let has_local_groups = buf[9] & FLAG_LOCAL_GROUPS != 0;
        let hand_off = buf[9] & FLAG_HAND_OFF != 0;
        if (has_local_groups && !has_local_user) || (hand_off && kind != HelloKind::Connect) {
            return Err(ProtoError::BadValue {
                field: "flags",
                value: buf[9].into(),
            });
        }
        let name_len = bounded_len(u16_at(buf, 10), MAX_NAME_BYTES, "name")?;
        let wait_ms = u32_at(buf, 12);
        let max_message = u32_at(buf, 16);
        let principal_len = bounded_len(u16_at(buf, 20), MAX_PRINCIPAL_BYTES, "principal")?;
        let computer_len = bounded_len(u16_at(buf, 22), MAX_PRINCIPAL_BYTES, "computer")?;
        let strings = HELLO_FIXED + name_len + principal_len + computer_len;
        let mut total = strings + if has_local_user { 4 } else { 0 };
        let mut groups_at = total;
        if has_local_groups {
            if buf.len() < total + 2 {
                return Ok(None);
            }
            let count = bounded_len(u16_at(buf, total), MAX_LOCAL_GROUPS, "local groups")?;
            if count == 0 {
                return Err(ProtoError::BadValue {
                    field: "local groups",
                    value: 0,
                });
            }
            groups_at = total + 2;
            total = groups_at + 4 * count;
        }
        if buf.len() < total {
            return Ok(None);
        }
        let mut at = HELLO_FIXED;
        let mut take = |len: usize, field| {
            let s = utf8(&buf[at..at + len], field);
            at += len;
            s
        };
        let name = take(name_len, "name")?;
        let principal = take(principal_len, "principal")?;
        let computer = take(computer_len, "computer")?;
        let local_user = has_local_user.then(|| u32_at(buf, strings));
        let local_groups = if has_local_groups {
            (groups_at..total)
                .step_by(4)
                .map(|at| u32_at(buf, at))
                .collect()
        } else {
            Vec::new()
        };
        if (local_user.is_some() || hand_off) && principal.is_empty() {
            // A local user maps a remote principal, and only a gateway
            // hands a connection over; alone they mean nothing.
            return Err(ProtoError::BadValue {
                field: "flags",
                value: buf[9].into(),
            });
        }
        // Only a query may leave the name empty ("describe what you serve").
        if name.is_empty() && kind == HelloKind::Connect {
            return Err(ProtoError::BadValue {
                field: "name length",
                value: 0,
            });
        }
        let hello = Hello {
            kind,
            access,
            read_mode,
            impersonation,
            wait_ms,
            max_message,
            pipelined,
            name,
            principal,
            computer,
            local_user,
            local_groups,
            hand_off,
        };
        Ok(Some((hello, total)))
    }
}

/// Appends `text`'s length (u16) and bytes, cut at a character boundary at
/// or below `max` bytes: texts for people (reasons, descriptors).
fn push_cut(out: &mut Vec<u8>, text: &str, max: usize) {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
}

impl Reply {
    /// Appends the encoded REPLY to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        let (status, code) = match self {
            Reply::Connected(_) => (STATUS_CONNECTED, 0),
            Reply::Info { .. } => (STATUS_INFO, 0),
            Reply::Refused { code, .. } => (STATUS_REFUSED, *code),
        };
        out.push(status);
        let flags = match self {
            Reply::Connected(desc) => {
                u8::from(desc.shared_memory)
                    | u8::from(desc.socket_wakes) << 1
                    | u8::from(desc.handed_over) << 2
                    | u8::from(desc.late_offers) << 3
            }
            _ => 0,
        };
        out.extend_from_slice(&[flags, 0]);
        out.extend_from_slice(&code.to_le_bytes());
        match self {
            Reply::Connected(d) | Reply::Info { desc: d, .. } => {
                let name_len = str_len(&d.name, MAX_NAME_BYTES, "name")?;
                out.push(match d.pipe_type {
                    PipeType::Byte => 0,
                    PipeType::Message => 1,
                });
                out.push(match d.direction {
                    Direction::Inbound => 0,
                    Direction::Outbound => 1,
                    Direction::Duplex => 2,
                });
                out.push(access_bits(Some(d.granted)));
                out.push(0);
                for v in [
                    d.max_instances,
                    d.cur_instances,
                    d.in_buffer,
                    d.out_buffer,
                    d.max_message,
                    d.default_timeout_ms,
                    d.handshake_timeout_ms,
                    d.waiting,
                ] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&name_len.to_le_bytes());
                push_str(out, &d.name);
            }
            Reply::Refused { reason, .. } => push_cut(out, reason, MAX_REASON_BYTES),
        }
        if let Reply::Info { security, .. } = self {
            push_cut(out, security, MAX_SECURITY_BYTES);
        }
        Ok(())
    }

    /// Decodes a REPLY from the start of `buf`: `Ok(None)` if more bytes are
    /// needed, else the reply and how many bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtoError> {
        check_preamble(buf)?;
        if buf.len() < REPLY_FIXED {
            return Ok(None);
        }
        let status = buf[5];
        let code = u32_at(buf, 8);
        match status {
            STATUS_CONNECTED | STATUS_INFO => {
                if code != 0 {
                    return Err(ProtoError::BadValue {
                        field: "code",
                        value: code.into(),
                    });
                }
                let fixed = REPLY_FIXED + DESC_FIXED;
                if buf.len() < fixed {
                    return Ok(None);
                }
                let d = &buf[REPLY_FIXED..];
                let pipe_type = match d[0] {
                    0 => PipeType::Byte,
                    1 => PipeType::Message,
                    v => {
                        return Err(ProtoError::BadValue {
                            field: "pipe type",
                            value: v.into(),
                        })
                    }
                };
                let direction = match d[1] {
                    0 => Direction::Inbound,
                    1 => Direction::Outbound,
                    2 => Direction::Duplex,
                    v => {
                        return Err(ProtoError::BadValue {
                            field: "direction",
                            value: v.into(),
                        })
                    }
                };
                let granted =
                    access_from_bits(d[2], "granted access")?.ok_or(ProtoError::BadValue {
                        field: "granted access",
                        value: 0,
                    })?;
                let name_len = bounded_len(u16_at(d, 36), MAX_NAME_BYTES, "name")?;
                if buf.len() < fixed + name_len {
                    return Ok(None);
                }
                let desc = PipeDescription {
                    pipe_type,
                    direction,
                    granted,
                    max_instances: u32_at(d, 4),
                    cur_instances: u32_at(d, 8),
                    in_buffer: u32_at(d, 12),
                    out_buffer: u32_at(d, 16),
                    max_message: u32_at(d, 20),
                    default_timeout_ms: u32_at(d, 24),
                    handshake_timeout_ms: u32_at(d, 28),
                    waiting: u32_at(d, 32),
                    name: utf8(&buf[fixed..fixed + name_len], "name")?,
                    // Byte 6 bit 0: a reserved byte in v1, which v1 never
                    // sets; it answers an offer only a newer client makes.
                    shared_memory: status == STATUS_CONNECTED && buf[6] & 1 != 0,
                    socket_wakes: status == STATUS_CONNECTED && buf[6] & 2 != 0,
                    handed_over: status == STATUS_CONNECTED && buf[6] & 4 != 0,
                    late_offers: status == STATUS_CONNECTED && buf[6] & 8 != 0,
                };
                let end = fixed + name_len;
                if status == STATUS_CONNECTED {
                    return Ok(Some((Reply::Connected(desc), end)));
                }
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                let len = bounded_len(u16_at(buf, end), MAX_SECURITY_BYTES, "security")?;
                if buf.len() < end + 2 + len {
                    return Ok(None);
                }
                let security = String::from_utf8_lossy(&buf[end + 2..end + 2 + len]).into_owned();
                Ok(Some((Reply::Info { desc, security }, end + 2 + len)))
            }
            STATUS_REFUSED => {
                if buf.len() < REPLY_FIXED + 2 {
                    return Ok(None);
                }
                let len = bounded_len(u16_at(buf, REPLY_FIXED), MAX_REASON_BYTES, "reason")?;
                let total = REPLY_FIXED + 2 + len;
                if buf.len() < total {
                    return Ok(None);
                }
                let reason = String::from_utf8_lossy(&buf[REPLY_FIXED + 2..total]).into_owned();
                Ok(Some((Reply::Refused { code, reason }, total)))
            }
            v => Err(ProtoError::BadValue {
                field: "status",
                value: v.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md §8, byte for byte: the spec's worked examples are what
    /// the encoders write.
    #[test]
    fn the_worked_examples_of_the_spec() {
        let hello = Hello {
            kind: HelloKind::Connect,
            access: Some(Access::ReadWrite),
            read_mode: ReadMode::Message,
            impersonation: ImpersonationLevel::Impersonation,
            wait_ms: WAIT_NONE,
            max_message: 0x0400_0000,
            pipelined: false,
            name: "echo".into(),
            principal: String::new(),
            computer: String::new(),
            local_user: None,
            local_groups: Vec::new(),
            hand_off: false,
        };
        let mut wire = Vec::new();
        hello.encode(&mut wire).unwrap();
        assert_eq!(
            wire,
            [
                0x4E, 0x50, 0x49, 0x50, 0x01, 0x01, 0x03, 0x01, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x65, 0x63, 0x68, 0x6F,
            ]
        );
        let busy = Reply::Refused {
            code: 231,
            reason: "busy".into(),
        };
        let mut wire = Vec::new();
        busy.encode(&mut wire).unwrap();
        assert_eq!(
            wire,
            [
                0x4E, 0x50, 0x49, 0x50, 0x01, 0x02, 0x00, 0x00, 0xE7, 0x00, 0x00, 0x00, 0x04, 0x00,
                0x62, 0x75, 0x73, 0x79,
            ]
        );
    }

    fn hello() -> Hello {
        Hello {
            kind: HelloKind::Connect,
            access: Some(Access::ReadWrite),
            read_mode: ReadMode::Message,
            impersonation: ImpersonationLevel::Identification,
            wait_ms: 1234,
            max_message: 1 << 20,
            pipelined: true,
            name: "échø".into(),
            principal: String::new(),
            computer: "host1".into(),
            local_user: None,
            local_groups: Vec::new(),
            hand_off: false,
        }
    }

    fn desc() -> PipeDescription {
        PipeDescription {
            pipe_type: PipeType::Message,
            direction: Direction::Inbound,
            granted: Access::Write,
            max_instances: 255,
            cur_instances: 3,
            in_buffer: 4096,
            out_buffer: 8192,
            max_message: 65536,
            default_timeout_ms: 50,
            handshake_timeout_ms: 5000,
            waiting: 7,
            name: "Echo".into(),
            shared_memory: false,
            socket_wakes: false,
            handed_over: false,
            late_offers: false,
        }
    }

    #[test]
    fn hello_round_trips_and_is_byte_exact() {
        let mut out = Vec::new();
        hello().encode(&mut out).unwrap();
        assert_eq!(&out[..4], b"NPIP");
        assert_eq!(out[4], 1);
        assert_eq!(out[5], 1); // connect
        assert_eq!(out[6], 3); // read|write
        assert_eq!(out[7], 1); // message read mode
        assert_eq!(out[8], 1); // identification
        assert_eq!(u16::from_le_bytes([out[10], out[11]]), "échø".len() as u16);
        assert_eq!(u32::from_le_bytes(out[12..16].try_into().unwrap()), 1234);
        assert_eq!(out.len(), HELLO_FIXED + "échø".len() + 5);
        let (h, used) = Hello::decode(&out).unwrap().unwrap();
        assert_eq!(h, hello());
        assert_eq!(used, out.len());
    }

    #[test]
    fn a_gateways_local_user_rides_behind_the_strings() {
        let mut remote = hello();
        remote.principal = "ci-agent".into();
        remote.local_user = Some(65534);
        let mut out = Vec::new();
        remote.encode(&mut out).unwrap();
        assert_eq!(out[9], FLAG_PIPELINED | FLAG_LOCAL_USER);
        assert_eq!(out[out.len() - 4..], 65534u32.to_le_bytes());
        for cut in 0..out.len() {
            assert_eq!(Hello::decode(&out[..cut]).unwrap(), None, "cut {cut}");
        }
        let (h, used) = Hello::decode(&out).unwrap().unwrap();
        assert_eq!((h, used), (remote, out.len()));
    }

    #[test]
    fn the_local_users_groups_ride_behind_it_bounded() {
        let mut remote = hello();
        remote.principal = "ci-agent".into();
        remote.local_user = Some(65534);
        remote.local_groups = vec![65534, 100, 27];
        let mut out = Vec::new();
        remote.encode(&mut out).unwrap();
        assert_eq!(out[9], FLAG_PIPELINED | FLAG_LOCAL_USER | FLAG_LOCAL_GROUPS);
        for cut in 0..out.len() {
            assert_eq!(Hello::decode(&out[..cut]).unwrap(), None, "cut {cut}");
        }
        let (h, used) = Hello::decode(&out).unwrap().unwrap();
        assert_eq!((h, used), (remote.clone(), out.len()));

        // Groups without a local user, none said to follow, or more than
        // the bound: malformed, and nothing is sized past the bound.
        let mut no_user = out.clone();
        no_user[9] &= !FLAG_LOCAL_USER;
        assert!(Hello::decode(&no_user).is_err());
        let count_at = out.len() - 2 - 4 * 3;
        let mut none = out.clone();
        none[count_at..count_at + 2].copy_from_slice(&0u16.to_le_bytes());
        assert!(Hello::decode(&none).is_err());
        let mut many = out.clone();
        many[count_at..count_at + 2].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            Hello::decode(&many),
            Err(ProtoError::TooLong {
                field: "local groups",
                ..
            })
        ));
        remote.local_groups = vec![1; MAX_LOCAL_GROUPS + 1];
        assert!(remote.encode(&mut Vec::new()).is_err());
        remote.local_groups = vec![1; MAX_LOCAL_GROUPS];
        let mut out = Vec::new();
        remote.encode(&mut out).unwrap();
        assert!(out.len() <= HELLO_MAX);
    }

    #[test]
    fn a_local_user_without_a_principal_is_malformed() {
        let mut lone = hello();
        lone.local_user = Some(0);
        let mut out = Vec::new();
        lone.encode(&mut out).unwrap();
        assert!(matches!(
            Hello::decode(&out),
            Err(ProtoError::BadValue { field: "flags", .. })
        ));
    }

    /// A gateway's offer to hand the connection over: flag 8, only with a
    /// principal and only for a connect; the server's answer is bit 2 of
    /// an OK's byte 6, which an INFO never carries.
    #[test]
    fn a_hand_off_offer_and_its_answer() {
        let mut offer = hello();
        offer.principal = "alice".into();
        offer.hand_off = true;
        let mut out = Vec::new();
        offer.encode(&mut out).unwrap();
        assert_eq!(out[9] & FLAG_HAND_OFF, FLAG_HAND_OFF);
        assert_eq!(Hello::decode(&out).unwrap().unwrap().0, offer);

        // Without a principal, or for a query: refused either way.
        for (principal, kind) in [("", HelloKind::Connect), ("alice", HelloKind::Query)] {
            let mut bad = offer.clone();
            bad.principal = principal.into();
            bad.kind = kind;
            assert!(bad.encode(&mut Vec::new()).is_err());
            let mut raw = Vec::new();
            bad.hand_off = false;
            bad.encode(&mut raw).unwrap();
            raw[9] |= FLAG_HAND_OFF;
            assert!(matches!(
                Hello::decode(&raw),
                Err(ProtoError::BadValue { field: "flags", .. })
            ));
        }

        let mut taken = desc();
        taken.handed_over = true;
        let mut reply = Vec::new();
        Reply::Connected(taken.clone()).encode(&mut reply).unwrap();
        assert_eq!(reply[6], 0b100);
        assert_eq!(
            Reply::decode(&reply).unwrap().unwrap().0,
            Reply::Connected(taken)
        );
    }

    #[test]
    fn hello_needs_every_byte_and_keeps_the_rest() {
        let mut out = Vec::new();
        hello().encode(&mut out).unwrap();
        for cut in 0..out.len() {
            assert_eq!(Hello::decode(&out[..cut]).unwrap(), None, "cut {cut}");
        }
        out.extend_from_slice(b"pipelined");
        let (_, used) = Hello::decode(&out).unwrap().unwrap();
        assert_eq!(&out[used..], b"pipelined");
    }

    #[test]
    fn garbage_is_refused_at_the_first_wrong_byte() {
        assert_eq!(Hello::decode(b"G"), Err(ProtoError::BadMagic));
        assert_eq!(Hello::decode(b"NPX"), Err(ProtoError::BadMagic));
        assert_eq!(Hello::decode(b"NPIP\x07"), Err(ProtoError::BadVersion(7)));
        assert_eq!(
            Hello::decode(b"GET / HTTP/1.1\r\n\r\n"),
            Err(ProtoError::BadMagic)
        );
    }

    #[test]
    fn lengths_are_bounded_before_waiting_for_them() {
        let mut out = Vec::new();
        hello().encode(&mut out).unwrap();
        out.truncate(HELLO_FIXED);
        out[10..12].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            Hello::decode(&out),
            Err(ProtoError::TooLong { field: "name", .. })
        ));
    }

    #[test]
    fn bad_fields_are_refused() {
        let mut good = Vec::new();
        hello().encode(&mut good).unwrap();
        for (at, v) in [(5, 9u8), (6, 4), (7, 2), (8, 0), (9, 4)] {
            let mut b = good.clone();
            b[at] = v;
            assert!(
                matches!(Hello::decode(&b), Err(ProtoError::BadValue { .. })),
                "byte {at}"
            );
        }
        let mut b = good.clone();
        b[HELLO_FIXED] = 0xff;
        assert_eq!(Hello::decode(&b), Err(ProtoError::BadUtf8("name")));
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Connected(desc()),
            Reply::Info {
                desc: desc(),
                security: "allow owner=full; allow everyone=r".into(),
            },
            Reply::Refused {
                code: 231,
                reason: "all instances are busy".into(),
            },
        ] {
            let mut out = Vec::new();
            reply.encode(&mut out).unwrap();
            for cut in 0..out.len() {
                assert_eq!(Reply::decode(&out[..cut]).unwrap(), None, "cut {cut}");
            }
            out.extend_from_slice(b"xyz");
            let (r, used) = Reply::decode(&out).unwrap().unwrap();
            assert_eq!(r, reply);
            assert_eq!(&out[used..], b"xyz");
        }
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let reply = Reply::Refused {
            code: 5,
            reason: "é".repeat(400),
        };
        let mut out = Vec::new();
        reply.encode(&mut out).unwrap();
        let (r, _) = Reply::decode(&out).unwrap().unwrap();
        match r {
            Reply::Refused { reason, .. } => assert_eq!(reason, "é".repeat(256)),
            _ => unreachable!(),
        }
    }

    /// REPLY byte 6 bit 0 says an OK took the client's shared memory; an
    /// INFO never does, whatever the byte says, and a v1 OK (byte 0) is
    /// the socket.
    #[test]
    fn the_shared_memory_answer_rides_in_byte_6_of_an_ok() {
        let mut taken = desc();
        taken.rings_taken(true);
        let mut out = Vec::new();
        Reply::Connected(taken.clone()).encode(&mut out).unwrap();
        assert_eq!(out[6], 0b11, "taken, and wakes through the socket");
        let (back, _) = Reply::decode(&out).unwrap().unwrap();
        assert_eq!(back, Reply::Connected(taken));
        // A server from before the socket rule set bit 0 alone.
        out[6] = 1;
        match Reply::decode(&out).unwrap().unwrap().0 {
            Reply::Connected(d) => assert!(d.shared_memory && !d.socket_wakes),
            other => panic!("{other:?}"),
        }

        let mut v1 = Vec::new();
        Reply::Connected(desc()).encode(&mut v1).unwrap();
        assert_eq!(v1[6], 0);
        match Reply::decode(&v1).unwrap().unwrap().0 {
            Reply::Connected(d) => assert!(!d.shared_memory),
            other => panic!("{other:?}"),
        }

        let info = info_with_flags(0b11);
        assert!(!info.shared_memory && !info.socket_wakes);
    }

    /// An INFO reply whose byte 6 says `flags`, decoded.
    fn info_with_flags(flags: u8) -> PipeDescription {
        let mut info = Vec::new();
        Reply::Info {
            desc: desc(),
            security: String::new(),
        }
        .encode(&mut info)
        .unwrap();
        info[6] = flags;
        match Reply::decode(&info).unwrap().unwrap().0 {
            Reply::Info { desc, .. } => desc,
            other => panic!("{other:?}"),
        }
    }

    /// Bit 3 of byte 6 says an OK's server takes a late offer (PROTOCOL
    /// §6d); an INFO never does.
    #[test]
    fn a_server_that_takes_late_offers_says_so_in_bit_3() {
        let mut late = desc();
        late.late_offers = true;
        let mut out = Vec::new();
        Reply::Connected(late.clone()).encode(&mut out).unwrap();
        assert_eq!(out[6], 0b1000);
        let (back, _) = Reply::decode(&out).unwrap().unwrap();
        assert_eq!(back, Reply::Connected(late));

        assert!(!info_with_flags(0b1000).late_offers);
    }
}

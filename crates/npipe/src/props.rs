//! Property tests: the stable-toolchain twins of the `cargo fuzz` targets in
//! `fuzz/` (one per decoder), run by `cargo test`.

use proptest::prelude::*;

use crate::proto::framing::{self, Decoder, HEADER_LEN};
use crate::proto::handshake::{
    Hello, HelloKind, PipeDescription, Reply, HELLO_MAX, MAX_NAME_BYTES, REPLY_MAX,
};
use crate::types::{Access, Direction, ImpersonationLevel, PipeType, ReadMode};
use crate::{PipeName, SecurityDescriptor};

fn access() -> impl Strategy<Value = Option<Access>> {
    prop_oneof![
        Just(None),
        Just(Some(Access::Read)),
        Just(Some(Access::Write)),
        Just(Some(Access::ReadWrite))
    ]
}

prop_compose! {
    fn hellos()(
        query in any::<bool>(),
        access in access(),
        message in any::<bool>(),
        identify in any::<bool>(),
        wait_ms in any::<u32>(),
        max_message in any::<u32>(),
        pipelined in any::<bool>(),
        name in "[a-zé ]{1,40}",
        principal in "[A-Za-z=@.]{0,20}",
        computer in "[a-z.-]{0,20}",
        local_user in proptest::option::of(any::<u32>()),
        local_groups in proptest::collection::vec(any::<u32>(), 0..8),
        hand_off in any::<bool>(),
    ) -> Hello {
        let local_user = local_user.filter(|_| !principal.is_empty());
        let hand_off = hand_off && !principal.is_empty() && !query;
        Hello {
            kind: if query { HelloKind::Query } else { HelloKind::Connect },
            access,
            read_mode: if message { ReadMode::Message } else { ReadMode::Byte },
            impersonation: if identify {
                ImpersonationLevel::Identification
            } else {
                ImpersonationLevel::Impersonation
            },
            wait_ms,
            max_message,
            pipelined,
            name,
            local_groups: if local_user.is_some() { local_groups } else { Vec::new() },
            local_user,
            principal,
            computer,
            hand_off,
        }
    }
}

prop_compose! {
    fn descriptions()(
        message in any::<bool>(),
        dir in 0u8..3,
        granted in 1u8..4,
        nums in proptest::array::uniform8(any::<u32>()),
        name in "[a-z0-9é]{0,30}",
    ) -> PipeDescription {
        PipeDescription {
            pipe_type: if message { PipeType::Message } else { PipeType::Byte },
            direction: [Direction::Inbound, Direction::Outbound, Direction::Duplex][dir as usize],
            granted: [Access::Read, Access::Write, Access::ReadWrite][granted as usize - 1],
            max_instances: nums[0],
            cur_instances: nums[1],
            in_buffer: nums[2],
            out_buffer: nums[3],
            max_message: nums[4],
            default_timeout_ms: nums[5],
            handshake_timeout_ms: nums[6],
            waiting: nums[7],
            name,
            shared_memory: false,
            socket_wakes: false,
            handed_over: false,
            late_offers: false,
        }
    }
}

fn replies() -> impl Strategy<Value = Reply> {
    prop_oneof![
        descriptions().prop_map(Reply::Connected),
        (descriptions(), "[ -~]{0,120}")
            .prop_map(|(desc, security)| Reply::Info { desc, security }),
        (1u32..2000, "[ -~]{0,80}").prop_map(|(code, reason)| Reply::Refused { code, reason }),
    ]
}

proptest! {
    /// Arbitrary bytes never panic the HELLO decoder, and what it accepts
    /// re-encodes to exactly the bytes it used.
    #[test]
    fn hello_decoder_on_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(Some((hello, used))) = Hello::decode(&data) {
            prop_assert!(used <= data.len() && used <= HELLO_MAX);
            let mut again = Vec::new();
            hello.encode(&mut again).unwrap();
            prop_assert_eq!(&again[..], &data[..used]);
        }
    }

    /// Random bytes almost never start with the magic, so the decoder's
    /// checks past it are reached by mutating real HELLOs: whatever it makes
    /// of them, it never panics, never reads past its bound, and what it
    /// accepts re-encodes to exactly the bytes it used.
    #[test]
    fn hello_decoder_on_mutated_hellos(
        hello in hellos(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut data = Vec::new();
        hello.encode(&mut data).unwrap();
        for (at, byte) in &edits {
            let i = at.index(data.len());
            data[i] = *byte;
        }
        if let Ok(Some((hello, used))) = Hello::decode(&data) {
            prop_assert!(used <= data.len() && used <= HELLO_MAX);
            let mut again = Vec::new();
            hello.encode(&mut again).unwrap();
            prop_assert_eq!(&again[..], &data[..used]);
        }
    }

    /// The same for REPLYs.
    #[test]
    fn reply_decoder_on_mutated_replies(
        reply in replies(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut data = Vec::new();
        reply.encode(&mut data).unwrap();
        for (at, byte) in &edits {
            let i = at.index(data.len());
            data[i] = *byte;
        }
        if let Ok(Some((_, used))) = Reply::decode(&data) {
            prop_assert!(used <= data.len() && used <= REPLY_MAX);
        }
    }

    /// Every HELLO round-trips, whatever follows it.
    #[test]
    fn hello_round_trips(hello in hellos(), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut wire = Vec::new();
        hello.encode(&mut wire).unwrap();
        let len = wire.len();
        wire.extend_from_slice(&tail);
        let (back, used) = Hello::decode(&wire).unwrap().unwrap();
        prop_assert_eq!(back, hello);
        prop_assert_eq!(used, len);
    }

    /// A HELLO cut short is "need more", never an error or a wrong HELLO.
    #[test]
    fn hello_prefixes_need_more(hello in hellos(), cut in any::<prop::sample::Index>()) {
        let mut wire = Vec::new();
        hello.encode(&mut wire).unwrap();
        let cut = cut.index(wire.len());
        prop_assert_eq!(Hello::decode(&wire[..cut]).unwrap(), None);
    }

    /// Arbitrary bytes never panic the REPLY decoder; every REPLY round-trips.
    #[test]
    fn reply_decoder(data in proptest::collection::vec(any::<u8>(), 0..2048), reply in replies()) {
        if let Ok(Some((_, used))) = Reply::decode(&data) {
            prop_assert!(used <= data.len() && used <= REPLY_MAX);
        }
        let mut wire = Vec::new();
        reply.encode(&mut wire).unwrap();
        let (back, used) = Reply::decode(&wire).unwrap().unwrap();
        prop_assert_eq!(back, reply);
        prop_assert_eq!(used, wire.len());
    }

    /// Messages framed and cut into arbitrary chunks come out whole and in
    /// order; a header over the maximum is refused.
    #[test]
    fn framing_survives_any_chunking(
        // Up to 399 bytes against a limit of 299: some runs meet an
        // oversize header, so the refusal is exercised too.
        msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 0..20),
        chunk in 1usize..64,
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend_from_slice(&framing::header(m.len() as u32));
            wire.extend_from_slice(m);
        }
        let mut d = Decoder::new(299);
        let (mut out, mut cur, mut at) = (Vec::new(), Vec::new(), 0);
        let mut refused = false;
        while at < wire.len() {
            if !d.in_message() {
                match d.start(&wire[at..]) {
                    Ok(Some(len)) => {
                        at += HEADER_LEN;
                        if len == 0 {
                            d.consume(0);
                            out.push(Vec::new());
                        }
                    }
                    Ok(None) => unreachable!("whole headers are on the wire"),
                    Err(_) => {
                        refused = true;
                        break;
                    }
                }
                continue;
            }
            let n = d.take(chunk.min(wire.len() - at));
            cur.extend_from_slice(&wire[at..at + n]);
            at += n;
            if d.consume(n) {
                out.push(std::mem::take(&mut cur));
            }
        }
        let longest = msgs.iter().map(Vec::len).max().unwrap_or(0);
        prop_assert_eq!(refused, longest > 299);
        if !refused {
            prop_assert_eq!(out, msgs);
        }
    }

    /// Any text: the descriptor parser never panics, and what parses prints
    /// back to an equal descriptor.
    #[test]
    fn descriptor_text(text in "\\PC{0,80}", entries in proptest::collection::vec(
        ("(allow|deny)", "(user:0|group:0|everyone|owner|remote:[a-z*]{1,5})", "(r|w|rw|full)"), 0..6)
    ) {
        if let Ok(sd) = text.parse::<SecurityDescriptor>() {
            prop_assert_eq!(sd.to_string().parse::<SecurityDescriptor>().unwrap(), sd);
        }
        let built: Vec<String> = entries.iter().map(|(v, t, r)| format!("{v} {t}={r}")).collect();
        let sd: SecurityDescriptor = built.join("; ").parse().unwrap();
        prop_assert_eq!(sd.entries().len(), entries.len());
        prop_assert_eq!(sd.to_string().parse::<SecurityDescriptor>().unwrap(), sd);
    }

    /// Any text: names never panic; valid ones have short file names and
    /// survive printing.
    #[test]
    fn pipe_names(text in "\\PC{0,300}") {
        if let Ok(name) = PipeName::parse(&text) {
            prop_assert!(name.name().chars().count() <= 256);
            prop_assert!(name.name().len() <= MAX_NAME_BYTES);
            prop_assert!(name.file_name().len() <= 64);
            prop_assert_eq!(PipeName::parse(&name.to_string()).unwrap(), name);
        }
    }
}

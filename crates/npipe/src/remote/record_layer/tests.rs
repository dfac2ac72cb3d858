//! The record layer against a real rustls client, in memory: the server's
//! side of a handshake rustls did, its keys extracted and handed to a
//! `RecordLayer`, as a gateway hands a connection to a pipe server.

use std::io::Read;
use std::sync::Arc;

use rustls::{ClientConnection, ServerConnection};

use super::*;
use crate::remote::relay::tests::configs;

/// A side that queues TLS records for the wire: a rustls connection, or
/// the record layer.
trait Queues {
    fn wants_write(&self) -> bool;
    fn write_tls(&mut self, out: &mut Vec<u8>);
}

impl<D> Queues for rustls::ConnectionCommon<D> {
    fn wants_write(&self) -> bool {
        let state: &rustls::CommonState = self;
        state.wants_write()
    }
    fn write_tls(&mut self, out: &mut Vec<u8>) {
        rustls::ConnectionCommon::write_tls(self, out).unwrap();
    }
}

impl Queues for RecordLayer {
    fn wants_write(&self) -> bool {
        RecordLayer::wants_write(self)
    }
    fn write_tls(&mut self, out: &mut Vec<u8>) {
        RecordLayer::write_tls(self, out).unwrap();
    }
}

/// What `side` has queued, as the bytes it writes.
fn drained(side: &mut impl Queues) -> Vec<u8> {
    let mut wire = Vec::new();
    while side.wants_write() {
        side.write_tls(&mut wire);
    }
    wire
}

/// Moves everything `from` has to send into `to`, as TCP would.
fn shuttle<A, B>(from: &mut rustls::ConnectionCommon<A>, to: &mut rustls::ConnectionCommon<B>) {
    let wire = drained(from);
    let mut rd = &wire[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
    }
    if !wire.is_empty() {
        to.process_new_packets().unwrap();
    }
}

/// A client and a server through their handshake (and the server's
/// session tickets); the server's side becomes a record layer.
fn handshake_with(
    server_config: rustls::ServerConfig,
    client_config: Arc<rustls::ClientConfig>,
) -> (ClientConnection, Option<SessionKeys>) {
    let mut server_config = server_config;
    server_config.enable_secret_extraction = true;
    let log = Arc::new(crate::remote::secret_log::ConnectionSecrets::default());
    server_config.key_log = Arc::clone(&log) as Arc<dyn rustls::KeyLog>;
    let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
    let mut client = ClientConnection::new(client_config, "localhost".try_into().unwrap()).unwrap();
    while client.is_handshaking()
        || server.is_handshaking()
        || client.wants_write()
        || server.wants_write()
    {
        shuttle(&mut *client, &mut *server);
        shuttle(&mut *server, &mut *client);
    }
    let suite = server.negotiated_cipher_suite().unwrap().suite();
    let mut keys = keys_from_extracted(suite, server.dangerous_extract_secrets().unwrap());
    // The secrets as a gateway finds them (remote::secret_log).
    if let Some(keys) = &mut keys {
        let (mut client_secret, mut server_secret) = log.take().expect("logged");
        keys.tx.secret = std::mem::take(&mut *server_secret);
        keys.rx.secret = std::mem::take(&mut *client_secret);
    }
    (client, keys)
}

/// A handed-over connection's record layer, with the secrets for sending
/// (`tx`) and receiving (`rx`) or without.
fn handshake_keeping(tx: bool, rx: bool) -> (ClientConnection, RecordLayer) {
    let (server_config, client_config) = configs();
    let (client, keys) = handshake_with((*server_config).clone(), client_config);
    let mut keys = keys.expect("a 256-bit suite");
    if !tx {
        keys.tx.secret.clear();
    }
    if !rx {
        keys.rx.secret.clear();
    }
    (client, RecordLayer::new(&keys).unwrap())
}

fn handshake() -> (ClientConnection, RecordLayer) {
    handshake_keeping(true, true)
}

/// What the layer has queued, as the bytes it writes.
fn sent(layer: &mut RecordLayer) -> Vec<u8> {
    drained(layer)
}

/// Feeds `wire` to the client and reads its plaintext; `Err` if TLS failed.
fn client_reads(client: &mut ClientConnection, wire: &[u8]) -> Result<Vec<u8>, rustls::Error> {
    let mut rd = wire;
    let mut out = Vec::new();
    while !rd.is_empty() {
        client.read_tls(&mut rd).unwrap();
        client.process_new_packets()?;
        let _ = client.reader().read_to_end(&mut out);
    }
    Ok(out)
}

/// What the client has queued, as bytes on the wire.
fn client_sends(client: &mut ClientConnection) -> Vec<u8> {
    drained(&mut **client)
}

/// Feeds `wire` to the layer in reads of `step` bytes at most.
fn layer_reads(
    layer: &mut RecordLayer,
    wire: &[u8],
    step: usize,
) -> (Vec<u8>, Result<Received, String>) {
    let mut plain = VecDeque::new();
    let mut last = Ok(Received::default());
    for piece in wire.chunks(step) {
        let mut rd = piece;
        while !rd.is_empty() {
            layer.read_tls(&mut rd).unwrap();
            last = layer.process(&mut plain);
            if last.is_err() {
                return (plain.into(), last);
            }
        }
    }
    (plain.into(), last)
}

#[test]
fn application_data_crosses_both_ways() {
    let (mut client, mut layer) = handshake();
    // 200 KB from the layer: many records, in several writes.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut at = 0;
    while at < big.len() {
        at += layer.write_plain(&[IoSlice::new(&big[at..])]).unwrap();
    }
    assert_eq!(client_reads(&mut client, &sent(&mut layer)).unwrap(), big);

    // From the client, gathered from two slices, arriving in odd pieces.
    use std::io::Write as _;
    client.writer().write_all(&big[..60_000]).unwrap();
    let wire = client_sends(&mut client);
    let (got, last) = layer_reads(&mut layer, &wire, 7_777);
    assert_eq!(got, &big[..60_000]);
    assert!(!last.unwrap().closed);

    // A write gathered from several slices is one stream.
    let n = layer
        .write_plain(&[IoSlice::new(b"ab"), IoSlice::new(b""), IoSlice::new(b"cd")])
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(
        client_reads(&mut client, &sent(&mut layer)).unwrap(),
        b"abcd"
    );
}

#[test]
fn a_record_read_a_byte_at_a_time_still_decrypts() {
    let (mut client, mut layer) = handshake();
    use std::io::Write as _;
    client.writer().write_all(b"one byte at a time").unwrap();
    let (got, last) = layer_reads(&mut layer, &client_sends(&mut client), 1);
    assert_eq!(got, b"one byte at a time");
    last.unwrap();
}

#[test]
fn close_notify_ends_each_way() {
    let (mut client, mut layer) = handshake();
    client.send_close_notify();
    let (got, last) = layer_reads(&mut layer, &client_sends(&mut client), 1 << 20);
    assert!(got.is_empty());
    assert!(last.unwrap().closed);

    layer.send_close_notify();
    layer.send_close_notify(); // once only
    let wire = sent(&mut layer);
    client_reads(&mut client, &wire).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        client.reader().read_to_end(&mut rest).unwrap(),
        0,
        "a clean end"
    );
    // Nothing may follow it.
    let late = layer.write_plain(&[IoSlice::new(b"late")]).unwrap_err();
    assert_eq!(late.kind(), io::ErrorKind::BrokenPipe);
}

/// The peer's key update, asking for ours, is followed and answered:
/// data crosses both ways under the new keys, again and again.
#[test]
fn key_updates_are_followed_and_answered() {
    let (mut client, mut layer) = handshake();
    use std::io::Write as _;
    for round in 0..3u8 {
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(&[round; 100]).unwrap();
        let (got, last) = layer_reads(&mut layer, &client_sends(&mut client), 1 << 20);
        last.unwrap();
        assert_eq!(got, [round; 100]);
        layer
            .write_plain(&[IoSlice::new(b"under new keys")])
            .unwrap();
        assert_eq!(
            client_reads(&mut client, &sent(&mut layer)).unwrap(),
            b"under new keys"
        );
    }
}

/// This side updates its keys before its cipher's record limit (here
/// made small), and the peer follows.
#[test]
fn keys_are_updated_before_the_record_limit() {
    let (mut client, mut layer) = handshake();
    layer.limit = layer.tx_seq + 3;
    let mut wire = Vec::new();
    for i in 0..20u8 {
        layer.write_plain(&[IoSlice::new(&[i; 10])]).unwrap();
        wire.extend(sent(&mut layer));
    }
    // Twenty records through a limit of three: only under new keys.
    let expected: Vec<u8> = (0..20u8).flat_map(|i| [i; 10]).collect();
    assert_eq!(client_reads(&mut client, &wire).unwrap(), expected);
    // Without the secrets, the limit ends the connection instead.
    let (_client, mut layer) = handshake_keeping(false, false);
    layer.limit = layer.tx_seq + 3;
    let ended = (0..20u8).find_map(|i| layer.write_plain(&[IoSlice::new(&[i; 10])]).err());
    assert!(ended.unwrap().to_string().contains("record limit"));
}

/// Without its secrets (a gateway that did not have them), a handed-over
/// connection cannot follow a key update: it ends, saying why. With one of
/// the two alone it does the same (with the receiving one alone it used to
/// follow the update and never answer it).
#[test]
fn a_key_update_without_the_secrets_ends_the_connection_with_a_word_why() {
    for (tx, rx) in [(false, false), (false, true), (true, false)] {
        let (mut client, mut layer) = handshake_keeping(tx, rx);
        client.refresh_traffic_keys().unwrap();
        use std::io::Write as _;
        client.writer().write_all(b"under new keys").unwrap();
        let (got, last) = layer_reads(&mut layer, &client_sends(&mut client), 1 << 20);
        assert!(got.is_empty(), "{tx} {rx}");
        let why = last.unwrap_err();
        assert!(why.contains("updated its TLS keys"), "{why}");
        // The client is told (an alert), and the layer stays failed.
        assert!(client_reads(&mut client, &sent(&mut layer)).is_err());
        assert!(layer.write_plain(&[IoSlice::new(b"x")]).is_err());
        assert_eq!(layer.process(&mut VecDeque::new()).unwrap_err(), why);
    }
}

#[test]
fn a_tampered_record_fails_and_the_client_is_told() {
    let (mut client, mut layer) = handshake();
    use std::io::Write as _;
    client.writer().write_all(b"precious").unwrap();
    let mut wire = client_sends(&mut client);
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let (got, result) = layer_reads(&mut layer, &wire, 1 << 20);
    assert!(got.is_empty());
    assert!(result.unwrap_err().contains("does not decrypt"));
    let told = client_reads(&mut client, &sent(&mut layer)).unwrap_err();
    assert!(format!("{told}").contains("BadRecordMac"), "{told}");
}

#[test]
fn records_that_break_the_rules_are_refused_before_anything_is_sized() {
    for (wire, why) in [
        (vec![23, 3, 3, 0xff, 0xff], "longer than TLS allows"),
        (vec![22, 3, 3, 0, 4, 1, 2, 3, 4], "unencrypted"),
        (vec![21, 3, 3, 0, 2, 1, 0], "unencrypted"),
    ] {
        let (_client, mut layer) = handshake();
        let (_, result) = layer_reads(&mut layer, &wire, 1 << 20);
        let got = result.unwrap_err();
        assert!(got.contains(why), "{got}");
    }
}

/// An alert is two bytes: a record of another length ends the connection
/// as malformed (it once read as alert 0, close_notify's number), and a
/// two-byte one is named.
#[test]
fn an_alert_of_the_wrong_length_is_malformed() {
    let (server_config, client_config) = configs();
    let (_client, keys) = handshake_with((*server_config).clone(), client_config);
    let keys = keys.expect("a 256-bit suite");
    // The client's side, as a second record layer with the keys mirrored.
    let mut mirrored = keys.clone();
    std::mem::swap(&mut mirrored.tx, &mut mirrored.rx);
    for (alert, why) in [
        (&[2u8][..], "a malformed alert"),
        (&[2, 40, 0][..], "a malformed alert"),
        (&[][..], "a malformed alert"),
        (&[2, 40][..], "the peer sent TLS alert 40"),
    ] {
        let mut layer = RecordLayer::new(&keys).unwrap();
        let mut client = RecordLayer::new(&mirrored).unwrap();
        client.seal_now(ContentType::Alert, &[alert]).unwrap();
        let (_, result) = layer_reads(&mut layer, &sent(&mut client), 1 << 20);
        let got = result.unwrap_err();
        assert!(got.contains(why), "{alert:?}: {got}");
    }
}

#[test]
fn a_suite_with_a_128_bit_key_is_not_carried() {
    let (_, client_config) = configs();
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.suite() == CipherSuite::TLS13_AES_128_GCM_SHA256);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    // The client trusts a different certificate: the handshake cannot be
    // done with these configurations, so build one that trusts this one.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client =
        rustls::ClientConfig::builder_with_provider(client_config.crypto_provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let (_, keys) = handshake_with(server, Arc::new(client));
    assert!(keys.is_none());
    let mut unknown = SessionKeys {
        suite: u16::from(CipherSuite::TLS13_AES_128_GCM_SHA256),
        tx: TrafficKeys {
            seq: 0,
            key: [7; 32],
            iv: [7; 12],
            secret: Vec::new(),
        },
        rx: TrafficKeys {
            seq: 0,
            key: [7; 32],
            iv: [7; 12],
            secret: Vec::new(),
        },
    };
    assert!(RecordLayer::new(&unknown).unwrap_err().contains("0x1301"));
    unknown.suite = u16::from(CipherSuite::TLS13_AES_256_GCM_SHA384);
    assert!(RecordLayer::new(&unknown).is_ok());
}

/// Key updates that ask for ours, sent by a peer that reads nothing, get
/// one answer before our next data, not one each (they used to queue a
/// record each, without bound); past 32 in a row the connection ends.
#[test]
fn many_key_updates_get_one_answer_and_a_bound() {
    let (mut client, mut layer) = handshake();
    for _ in 0..10 {
        client.refresh_traffic_keys().unwrap();
    }
    let (_, last) = layer_reads(&mut layer, &client_sends(&mut client), 1 << 20);
    last.unwrap();
    assert!(!layer.wants_write(), "nothing sent before our next data");
    layer.write_plain(&[IoSlice::new(b"after ten")]).unwrap();
    assert_eq!(layer.outgoing.len(), 2, "one key update, then the data");
    assert_eq!(
        client_reads(&mut client, &sent(&mut layer)).unwrap(),
        b"after ten"
    );
    for _ in 0..33 {
        client.refresh_traffic_keys().unwrap();
    }
    let (_, last) = layer_reads(&mut layer, &client_sends(&mut client), 1 << 20);
    assert!(last.unwrap_err().contains("too many key updates"));
}

/// A write of many small slices still crosses whole and in order (a record
/// gathers at most a few of them, and the next takes the rest).
#[test]
fn a_write_of_many_small_slices_crosses_whole() {
    let (mut client, mut layer) = handshake();
    let pieces: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 3]).collect();
    let slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
    assert_eq!(layer.write_plain(&slices).unwrap(), 120);
    assert_eq!(
        client_reads(&mut client, &sent(&mut layer)).unwrap(),
        pieces.concat()
    );
}

/// Empty application records between key updates are no data: a peer
/// that sends one after every 32 updates still meets the bound (it used to
/// reset the count, for unbounded key derivations).
#[test]
fn empty_records_do_not_reset_the_key_update_bound() {
    let (server_config, client_config) = configs();
    let (_client, keys) = handshake_with((*server_config).clone(), client_config);
    let keys = keys.expect("a 256-bit suite");
    let mut server = RecordLayer::new(&keys).unwrap();
    // The client's side of the same connection, as a record layer.
    let swapped = SessionKeys {
        suite: keys.suite,
        tx: keys.rx.clone(),
        rx: keys.tx.clone(),
    };
    let mut peer = RecordLayer::new(&swapped).unwrap();
    let mut ended = None;
    for _ in 0..3 {
        for _ in 0..16 {
            peer.update_tx().unwrap();
        }
        peer.seal_now(ContentType::ApplicationData, &[]).unwrap();
        let (_, last) = layer_reads(&mut server, &sent(&mut peer), 1 << 20);
        if let Err(why) = last {
            ended = Some(why);
            break;
        }
    }
    assert!(ended.expect("never ended").contains("too many key updates"));
}

//! `npipe cert`: a certificate authority and the certificates remote pipes
//! need (a gateway's, each client's), without openssl.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::CmdResult;
use crate::exit::{Failure, Status};

const AFTER_HELP: &str = r"Examples (one CA, a gateway on host db1, a client alice):
  npipe cert ca certs
  npipe cert issue gateway --ca certs --out certs --host db1 --host 127.0.0.1
  npipe cert issue alice --ca certs --out certs
Then on db1:  npipe gateway --cert certs/gateway.crt --key certs/gateway.key --ca certs/ca.crt
and as alice: npipe call '\\db1\pipe\echo' hi --cert certs/alice.crt --key certs/alice.key --ca certs/ca.crt

Keys are written with mode 0600; a file that exists is never overwritten.";

/// Arguments of `npipe cert`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Make a CA and certificates for remote pipes",
    after_help = AFTER_HELP
)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

/// What to make.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// A certificate authority: DIR/ca.crt and DIR/ca.key
    Ca {
        /// Where to write them (created if missing)
        dir: PathBuf,
        /// How many days it is valid
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// A certificate the CA signs: OUTDIR/NAME.crt and OUTDIR/NAME.key
    ///
    /// NAME is its common name: for a client, the remote principal servers
    /// see; for a gateway, any name, with --host for each name or address
    /// clients dial it by.
    Issue {
        /// The certificate's common name (a client's remote principal)
        name: String,
        /// The CA's directory (as `npipe cert ca` made it)
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Where to write the certificate and key (created if missing)
        #[arg(long, value_name = "OUTDIR")]
        out: PathBuf,
        /// A host name or IP address the certificate is for (a gateway's;
        /// repeatable)
        #[arg(long = "host", value_name = "H")]
        hosts: Vec<String>,
        /// How many days it is valid
        #[arg(long, default_value_t = 825, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
}

/// Runs `npipe cert`.
pub fn run(args: &Args) -> CmdResult {
    match &args.what {
        What::Ca { dir, days } => make_ca(dir, *days),
        What::Issue {
            name,
            ca,
            out,
            hosts,
            days,
        } => issue(name, ca, out, hosts, *days),
    }
}

/// The longest NAME: a principal fits a HELLO, and `NAME.crt` a file name.
const NAME_MAX: usize = 251;

fn failure(what: impl std::fmt::Display) -> Failure {
    Failure::new(Status::Other, what.to_string())
}

/// The validity: from a day ago (clocks differ) for `days` days.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// The CA's parameters as its certificate has them: what signing needs.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn make_ca(dir: &Path, days: u32) -> CmdResult {
    let (crt, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    refuse_existing(&[&crt, &key_path])?;
    // A name of its own, so two CAs never look alike to people.
    let common_name = format!("npipe CA {:08x}", rand_id());
    let mut params = ca_params(&common_name);
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(failure)?;
    let cert = params.self_signed(&key).map_err(failure)?;
    write_pair(dir, &crt, &cert.pem(), &key_path, &key.serialize_pem())?;
    println!(
        "wrote {} and {} ({common_name})",
        crt.display(),
        key_path.display()
    );
    Ok(())
}

fn issue(name: &str, ca_dir: &Path, out: &Path, hosts: &[String], days: u32) -> CmdResult {
    // NAME names the files too: nothing that leaves OUTDIR or hides.
    if name.is_empty()
        || name.len() > NAME_MAX
        || name.starts_with('.')
        || name.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(Failure::new(
            Status::Usage,
            format!(
                "NAME must be 1 to {NAME_MAX} bytes, without control characters or `/`, not \
                 starting with `.`"
            ),
        ));
    }
    let (crt, key_path) = (
        out.join(format!("{name}.crt")),
        out.join(format!("{name}.key")),
    );
    refuse_existing(&[&crt, &key_path])?;
    let ca_crt = ca_dir.join("ca.crt");
    let ca_name = npipe::remote::principal_of(&ca_crt)
        .map_err(|e| failure(e).hint("make the CA with `npipe cert ca DIR` first"))?;
    let ca_key_text = std::fs::read_to_string(ca_dir.join("ca.key")).map_err(|e| {
        failure(format!(
            "cannot read {}: {e}",
            ca_dir.join("ca.key").display()
        ))
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_text).map_err(failure)?;
    let issuer = Issuer::new(ca_params(&ca_name), ca_key);

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every certificate may be a client's; one with hosts is a gateway's too.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if !hosts.is_empty() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    for host in hosts {
        params.subject_alt_names.push(match host.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.clone()
                    .try_into()
                    .map_err(|e| Failure::new(Status::Usage, format!("--host {host:?}: {e}")))?,
            ),
        });
    }
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(failure)?;
    let cert = params.signed_by(&key, &issuer).map_err(failure)?;
    write_pair(out, &crt, &cert.pem(), &key_path, &key.serialize_pem())?;
    println!(
        "wrote {} and {} (signed by {ca_name})",
        crt.display(),
        key_path.display()
    );
    Ok(())
}

fn refuse_existing(paths: &[&Path]) -> CmdResult {
    for path in paths {
        if path.symlink_metadata().is_ok() {
            return Err(Failure::new(
                Status::Usage,
                format!(
                    "{} exists; npipe cert never overwrites a file",
                    path.display()
                ),
            )
            .hint("remove it, or write to another directory"));
        }
    }
    Ok(())
}

/// Writes the certificate (0644) and the key (0600, created new, never
/// through a link).
fn write_pair(dir: &Path, crt: &Path, crt_pem: &str, key: &Path, key_pem: &str) -> CmdResult {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    use std::os::unix::fs::OpenOptionsExt;
    // A directory made here is ours alone, whatever the umask.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| failure(format!("cannot create {}: {e}", dir.display())))?;
    refuse_shared_dir(dir)?;
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| failure(format!("cannot write {}: {e}", path.display())))
    };
    write(key, key_pem, 0o600)?;
    write(crt, crt_pem, 0o644)
}

/// A key in a directory another user may write to (or above which one
/// may) could be replaced or swapped for a link before it is used: the
/// gateway's own rule for its files, applied before the key is written.
fn refuse_shared_dir(dir: &Path) -> CmdResult {
    npipe::remote::check_key_dir(dir).map_err(|e| {
        Failure::new(Status::Usage, e.message().to_string())
            .hint("write certificates and keys to a directory of your own (mode 0755 or 0700)")
    })
}

/// 32 random bits for a CA's name (not a secret: only told apart).
fn rand_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

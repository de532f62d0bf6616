//! `[audit.external_auth]`: the same settings as Botpress's `pro.externalAuth`, so the audit trail
//! can verify the end-user tokens the webchat sends in `X-BP-ExternalAuth` exactly as Botpress
//! does (`core/app/server.ts`, `decodeExternalToken`). The key is read and parsed here, once, so a
//! bad key is a configuration error naming its key rather than a silent `external_auth_invalid`
//! on every line.

use std::fmt;
use std::path::PathBuf;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;

use super::{types, Secret};

/// Botpress's `pro.externalAuth`. Off while no key is given.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ExternalAuth {
    /// `pro.externalAuth.publicKey`: a PEM public key or certificate (RS*, PS*, ES*) or the
    /// shared secret (HS*).
    pub public_key: Secret,
    /// Or the file holding it (Botpress's `data/global/end_users_auth.pub`), read as it is.
    #[serde(with = "types::opt_path")]
    pub public_key_file: Option<PathBuf>,
    /// `pro.externalAuth.algorithms` (Botpress's default `["HS256"]`).
    pub algorithms: Vec<String>,
    /// `pro.externalAuth.issuer`; empty: not checked.
    #[serde(with = "types::opt_string")]
    pub issuer: Option<String>,
    /// `pro.externalAuth.audience`; empty: not checked.
    #[serde(with = "types::opt_string")]
    pub audience: Option<String>,
    /// Claims naming the end user; the first one present as a string wins. Botpress hands the
    /// whole payload to bots as `event.credentials`, so which claim is the user is the issuer's
    /// choice.
    pub user_claims: Vec<String>,
}

impl Default for ExternalAuth {
    fn default() -> Self {
        ExternalAuth {
            public_key: Secret::default(),
            public_key_file: None,
            algorithms: vec!["HS256".into()],
            issuer: None,
            audience: None,
            user_claims: vec!["sub".into(), "email".into()],
        }
    }
}

impl ExternalAuth {
    /// The algorithms both Botpress's jsonwebtoken 8.5.1 and bpgate verify.
    pub const ALGORITHMS: &'static [&'static str] = &[
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
        "ES384",
    ];

    /// On when a key is given.
    pub fn enabled(&self) -> bool {
        !self.public_key.is_empty() || self.public_key_file.is_some()
    }
}

/// The first setting that differs from its default while no key is given.
pub(super) fn set_without_key(ea: &ExternalAuth) -> Option<&'static str> {
    let d = ExternalAuth::default();
    if ea.algorithms != d.algorithms {
        Some(ALGS)
    } else if ea.issuer.is_some() {
        Some("audit.external_auth.issuer")
    } else if ea.audience.is_some() {
        Some("audit.external_auth.audience")
    } else if ea.user_claims != d.user_claims {
        Some("audit.external_auth.user_claims")
    } else {
        None
    }
}

/// The verified-ready key: an HMAC secret or a public key as DER `SubjectPublicKeyInfo`.
#[derive(Clone, PartialEq, Eq)]
pub enum ExternalKey {
    Hmac(Vec<u8>),
    Rsa(Vec<u8>),
    Ec(Vec<u8>),
}

impl fmt::Debug for ExternalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExternalKey::Hmac(_) => "ExternalKey::Hmac(<redacted>)",
            ExternalKey::Rsa(_) => "ExternalKey::Rsa(..)",
            ExternalKey::Ec(_) => "ExternalKey::Ec(..)",
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Hmac,
    Rsa,
    Ec,
}

fn family(alg: &str) -> Family {
    match alg.get(..2) {
        Some("HS") => Family::Hmac,
        Some("ES") => Family::Ec,
        _ => Family::Rsa,
    }
}

const KEY: &str = "audit.external_auth.public_key";
const FILE: &str = "audit.external_auth.public_key_file";
const ALGS: &str = "audit.external_auth.algorithms";

/// Checks `[audit.external_auth]` and loads its key; `None` when it is off or wrong (then `err`
/// was called with the key, the problem and the fix).
pub(super) fn load(
    ea: &ExternalAuth,
    err: &mut dyn FnMut(&str, String, String),
) -> Option<ExternalKey> {
    if !ea.enabled() {
        return None;
    }
    let (key_name, raw): (&str, Vec<u8>) = match &ea.public_key_file {
        Some(_) if !ea.public_key.is_empty() => {
            err(
                KEY,
                "both public_key and public_key_file are set".into(),
                "keep one: the key Botpress has in pro.externalAuth.publicKey, or its file".into(),
            );
            return None;
        }
        // Botpress reads the file as it is (a trailing newline is part of an HMAC secret).
        Some(p) => match std::fs::read(p) {
            Ok(b) if !b.is_empty() => (FILE, b),
            Ok(_) => {
                err(
                    FILE,
                    format!("{} is empty", p.display()),
                    "point it at Botpress's key file (data/global/end_users_auth.pub)".into(),
                );
                return None;
            }
            Err(e) => {
                err(FILE, format!("cannot read {}: {e}", p.display()), "point it at a readable copy of Botpress's key (data/global/end_users_auth.pub), or set public_key".into());
                return None;
            }
        },
        None => (KEY, ea.public_key.expose().as_bytes().to_vec()),
    };
    let supported = ExternalAuth::ALGORITHMS.join(", ");
    if ea.algorithms.is_empty() {
        err(ALGS, "is empty".into(), format!("copy pro.externalAuth.algorithms (Botpress's default is [\"HS256\"]); one of {supported}"));
        return None;
    }
    let mut families = Vec::new();
    for (i, a) in ea.algorithms.iter().enumerate() {
        if !ExternalAuth::ALGORITHMS.contains(&a.as_str()) {
            err(
                &format!("{ALGS}.{i}"),
                format!("`{a}` is not an algorithm bpgate verifies as Botpress does"),
                format!("use one of {supported} (upper case, as in pro.externalAuth.algorithms)"),
            );
            return None;
        }
        let f = family(a);
        if !families.contains(&f) {
            families.push(f);
        }
    }
    if families.len() > 1 {
        err(
            ALGS,
            format!("{:?} mixes HMAC and public-key algorithms; one key cannot serve both (Botpress would take the public key's text as an HMAC secret, so anyone could sign HS tokens)", ea.algorithms),
            "list the algorithms of one family only, here and in Botpress's pro.externalAuth.algorithms".into(),
        );
        return None;
    }
    let user_claims_ok = !ea.user_claims.is_empty() && ea.user_claims.iter().all(|c| !c.is_empty());
    if !user_claims_ok {
        err(
            "audit.external_auth.user_claims",
            "must name at least one claim, none empty".into(),
            "use the claim your token issuer puts the user in, e.g. [\"sub\", \"email\"]".into(),
        );
        return None;
    }
    match ExternalKey::parse(&raw, &ea.algorithms) {
        Ok(k) => Some(k),
        Err(p) => {
            err(key_name, p, "give the key Botpress has in pro.externalAuth.publicKey or end_users_auth.pub: a PEM public key (-----BEGIN PUBLIC KEY-----) or certificate for RS*, PS*, ES*, the secret for HS*".into());
            None
        }
    }
}

impl ExternalKey {
    /// The key `raw` (Botpress's `publicKey` text) is for `algorithms` (known, one family).
    pub fn parse(raw: &[u8], algorithms: &[String]) -> Result<ExternalKey, String> {
        match algorithms.first().map(|a| family(a)) {
            Some(Family::Hmac) => Ok(ExternalKey::Hmac(raw.to_vec())),
            Some(_) => check_key_type(&public_key_der(raw)?, algorithms),
            None => Err("no algorithms".into()),
        }
    }
}

/// The DER `SubjectPublicKeyInfo` of a PEM public key or certificate.
fn public_key_der(pem_bytes: &[u8]) -> Result<Vec<u8>, String> {
    match SubjectPublicKeyInfoDer::from_pem_slice(pem_bytes) {
        Ok(k) => return Ok(k.as_ref().to_vec()),
        Err(pem::Error::NoItemsFound) => {}
        Err(e) => return Err(format!("not a readable PEM public key ({e})")),
    }
    match CertificateDer::from_pem_slice(pem_bytes) {
        Ok(c) => {
            let (_, cert) = x509_parser::parse_x509_certificate(c.as_ref())
                .map_err(|e| format!("the PEM certificate does not parse ({e})"))?;
            Ok(cert.public_key().raw.to_vec())
        }
        Err(pem::Error::NoItemsFound) => Err(
            "holds no `PUBLIC KEY` or `CERTIFICATE` PEM block (a PKCS#1 `RSA PUBLIC KEY` converts with `openssl rsa -RSAPublicKey_in -in key.pem -pubout`)".into(),
        ),
        Err(e) => Err(format!("not a readable PEM certificate ({e})")),
    }
}

/// The key's type against the algorithms: RSA for RS*/PS*, the matching curve for ES*.
fn check_key_type(spki: &[u8], algorithms: &[String]) -> Result<ExternalKey, String> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    };
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| format!("the public key does not parse ({e})"))?;
    let oid = &info.algorithm.algorithm;
    let rsa_wanted = family(&algorithms[0]) == Family::Rsa;
    if rsa_wanted {
        if *oid == OID_PKCS1_RSAENCRYPTION {
            return Ok(ExternalKey::Rsa(spki.to_vec()));
        }
        return Err(format!("is not an RSA key, but {algorithms:?} need one"));
    }
    if *oid != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(format!("is not an EC key, but {algorithms:?} need one"));
    }
    let curve = info
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    for a in algorithms {
        let want = if a == "ES256" {
            &OID_EC_P256
        } else {
            &OID_NIST_EC_P384
        };
        if curve.as_ref() != Some(want) {
            return Err(format!(
                "is not on the curve {a} needs ({})",
                if a == "ES256" { "P-256" } else { "P-384" }
            ));
        }
    }
    Ok(ExternalKey::Ec(spki.to_vec()))
}

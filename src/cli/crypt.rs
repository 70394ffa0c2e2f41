//! `lbx-relay decrypt` and `encrypt`: one Learnybox envelope opened or made, as PHP's openssl does.

use std::process::ExitCode;

use anyhow::{anyhow, Context};
use secrecy::{ExposeSecret, SecretString};

use super::{read_input, SecretArg};
use crate::crypto::{self, Hint, KeyForm, Keyring, OpenOptions, Sealed, Variant};

pub(super) fn decrypt(secret: &SecretArg, iv: Option<&str>, file: &str) -> anyhow::Result<ExitCode> {
    let body = read_input(file)?;
    let keys = Keyring::new(&[secret.get()?]);
    let opts = OpenOptions { mode: crypto::EnvelopeMode::Auto, allow_plaintext: false };
    let opened = crypto::open(&Sealed { body: &body, iv_header: iv }, &keys, &opts, &Hint::default())
        .map_err(|e| anyhow!("could not decrypt: {e}"))?;
    eprintln!("envelope: {}  key form: {}", opened.variant.name(), opened.key_form.map(KeyForm::name).unwrap_or("-"));
    out!("{}", serde_json::to_string_pretty(&opened.plaintext)?);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn seal_input(
    secret: &SecretString,
    envelope: &str,
    key_form: &str,
    plaintext: &[u8],
) -> anyhow::Result<crypto::SealedBody> {
    let variant = Variant::from_name(envelope)
        .ok_or_else(|| anyhow!("unknown envelope {envelope:?}; one of {}", Variant::names().join(", ")))?;
    let form = KeyForm::from_name(key_form)
        .ok_or_else(|| anyhow!("unknown key form {key_form:?}; one of raw, hex64, base64, sha256"))?;
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(plaintext)
        .context("the input must be a JSON object")?;
    Ok(crypto::seal(plaintext, secret.expose_secret(), variant, form, crypto::random_iv())?)
}

pub(super) fn encrypt(secret: &SecretArg, envelope: &str, key_form: &str, file: &str) -> anyhow::Result<ExitCode> {
    let sealed = seal_input(&secret.get()?, envelope, key_form, &read_input(file)?)?;
    for (k, v) in &sealed.headers {
        eprintln!("header: {k}: {v}");
    }
    out!("{}", sealed.body);
    Ok(ExitCode::SUCCESS)
}

//! Criterion benchmarks of the per-event hot path: envelope detection and decryption (first
//! contact and with the remembered variant), the deduplication cache, routing, and rendering a
//! typical CRM template.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use lbx_relay::compiled::Compiled;
use lbx_relay::config::Config;
use lbx_relay::crypto::{self, EnvelopeMode, Hint, KeyForm, Keyring, OpenOptions, Sealed, Variant};
use lbx_relay::event::Event;
use lbx_relay::templates::TemplateContext;
use secrecy::SecretString;

const SECRET: &str = "fCRUwnAmjwESpfv8YsPwFaCIQe0nXLkY";

fn sample() -> serde_json::Value {
    let all: Vec<serde_json::Value> = serde_json::from_str(lbx_relay::cli::SAMPLE_EVENTS).unwrap();
    all[0].clone()
}

fn decryption(c: &mut Criterion) {
    let plaintext = sample().to_string();
    let keys = Keyring::new(&[SecretString::from(SECRET.to_string())]);
    let opts = OpenOptions { mode: EnvelopeMode::Auto, allow_plaintext: false };
    for variant in [Variant::JsonDataIv, Variant::PhpDoubleColon, Variant::Laravel] {
        let body = crypto::seal(plaintext.as_bytes(), SECRET, variant, KeyForm::Raw, crypto::random_iv()).unwrap().body;
        c.bench_function(&format!("open {} ({} B), variant unknown", variant.name(), body.len()), |b| {
            b.iter(|| {
                let hint = Hint::default();
                crypto::open(&Sealed { body: black_box(body.as_bytes()), iv_header: None }, &keys, &opts, &hint)
                    .unwrap()
            })
        });
        let hint = Hint::default();
        crypto::open(&Sealed { body: body.as_bytes(), iv_header: None }, &keys, &opts, &hint).unwrap();
        c.bench_function(&format!("open {} ({} B), variant remembered", variant.name(), body.len()), |b| {
            b.iter(|| {
                crypto::open(&Sealed { body: black_box(body.as_bytes()), iv_header: None }, &keys, &opts, &hint)
                    .unwrap()
            })
        });
    }
    let sha_secret = "a passphrase that is hashed into the key";
    let body =
        crypto::seal(plaintext.as_bytes(), sha_secret, Variant::JsonDataIv, KeyForm::Sha256, crypto::random_iv())
            .unwrap()
            .body;
    let keys = Keyring::new(&[SecretString::from(sha_secret.to_string())]);
    c.bench_function("open json-data-iv, sha256 key form, variant unknown", |b| {
        b.iter(|| {
            let hint = Hint::default();
            crypto::open(&Sealed { body: black_box(body.as_bytes()), iv_header: None }, &keys, &opts, &hint).unwrap()
        })
    });
}

fn routing_and_rendering(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = |name: &str| match name {
        "LEARNYBOX_SECRET_KEY" => Some(SECRET.to_string()),
        _ => None,
    };
    let text = std::fs::read_to_string(dir.join("routes.toml")).unwrap();
    let config = Config::from_toml(&text, &dir.join("routes.toml"), &env).unwrap();
    let rt = Compiled::build(config).unwrap();
    let serde_json::Value::Object(map) = sample() else { unreachable!() };
    let src = rt.config.source("learnybox").unwrap();
    let event = Event::from_plaintext("learnybox", map, None, &src.event_field, &src.id_field, 0);
    c.bench_function("route an event (2 routes, one `when`)", |b| {
        b.iter(|| rt.routes.matching(&rt.config, &rt.templates, black_box(&event)))
    });
    let route = rt.config.route("brevo-contacts").unwrap();
    c.bench_function("render the Brevo contact template (.json.hbs)", |b| {
        b.iter(|| rt.templates.render(route, &TemplateContext::new(black_box(&event), &route.vars, "d")).unwrap())
    });
    let hook = rt.config.route("automation-hook").unwrap();
    c.bench_function("render the whole-event automation template (json helper)", |b| {
        b.iter(|| rt.templates.render(hook, &TemplateContext::new(black_box(&event), &hook.vars, "d")).unwrap())
    });
}

fn deduplication(c: &mut Criterion) {
    // A full cache, as after the first 50,000 events: each new event is looked up, then remembered.
    let dedup = lbx_relay::dedup::Dedup::default();
    let window = std::time::Duration::from_secs(86_400);
    let now = 1_700_000_000_000;
    for n in 0..60_000 {
        dedup.remember("learnybox", &format!("evt_{n:012}"), window, now);
    }
    let mut n = 60_000u64;
    c.bench_function("dedup: a new key looked up then remembered (full cache)", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("evt_{n:012}");
            if !dedup.seen("learnybox", black_box(&key), now) {
                dedup.remember("learnybox", &key, window, now);
            }
        })
    });
}

criterion_group!(benches, decryption, deduplication, routing_and_rendering);
criterion_main!(benches);

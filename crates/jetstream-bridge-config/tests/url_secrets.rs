//! Credentials in NATS URLs never show, whatever they contain and wherever the URL goes in:
//! `NatsUrl::parse`, `NatsUrls::parse`, `Config::builder().nats_urls(..)`, `NATS_URLS` and
//! `NATS_URL`; and whatever comes out: `Display`, `Debug`, `Serialize`, error text.

use jetstream_bridge_config::{Config, ConfigBuilder, NatsUrl, NatsUrlError, NatsUrls};
use proptest::prelude::*;

/// A password or token: secret words (`Q1X2Z`, never produced by anything else here) joined by
/// characters that confuse URL parsing, including list separators and whole schemes.
fn secret() -> impl Strategy<Value = (String, Vec<String>)> {
    let word = "[QXZ][0-9][QXZ][0-9][QXZ]";
    let glue = prop_oneof![
        Just(String::new()),
        "[,/?#@:%=! ]{1,2}",
        Just(",nats://".to_owned()),
        Just(", tls://".to_owned()),
        Just("://".to_owned()),
        Just(",,".to_owned()),
    ];
    (prop::collection::vec((glue.clone(), word), 1..4), glue).prop_map(|(parts, tail)| {
        let mut text = String::new();
        let mut words = Vec::new();
        for (glue, word) in parts {
            text.push_str(&glue);
            text.push_str(&word);
            words.push(word);
        }
        text.push_str(&tail);
        (text, words)
    })
}

/// `scheme://<credentials>@host[:port]`, the credentials' secret words, and the host.
fn url_with_credentials() -> impl Strategy<Value = (String, String, Vec<String>, String)> {
    let scheme = prop::sample::select(vec!["nats", "tls", "nats+tls", "NATS"]);
    // Users are shown, so they hold no secret words (and no `q`, `x`, `z`).
    let user = "[a-p0-9,/?#@%!.-]{0,6}";
    let host = "[a-p][a-p0-9-]{0,10}";
    let port = prop::option::of(1u16..);
    let form = 0..4u8;
    (scheme, user, secret(), host, port, form).prop_map(
        |(scheme, user, (secret, words), host, port, form)| {
            let credentials = match form {
                0 => format!("{user}:{secret}"),
                1 => format!(":{secret}"),
                // A token: the part before a `:` would be a user name, so only the rest is secret.
                2 => secret.replace(':', "%3A"),
                _ => format!("{user}:{secret}"),
            };
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            (
                format!("{scheme}://{credentials}@{host}{port}"),
                credentials,
                words,
                host,
            )
        },
    )
}

fn check_hidden(words: &[String], what: &str, text: &str) -> Result<(), TestCaseError> {
    let lower = text.to_ascii_lowercase();
    for word in words {
        prop_assert!(
            !lower.contains(&word.to_ascii_lowercase()),
            "{what} shows {word}: {text}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn credentials_never_show((url, credentials, words, host) in url_with_credentials(),
                              before in prop::sample::select(vec!["", "nats://n1:4222,", "nats://w:Q0Q0Q@n1,"]),
                              after in prop::sample::select(vec!["", ",nats://n2", ", tls://v:X0X0X@n2:1,"])) {
        let mut words = words;
        words.extend(["Q0Q0Q".to_owned(), "X0X0X".to_owned()]);
        // One URL on its own: accepted exactly when the credentials hold nothing that would end
        // them early or split a list; then the host is what follows the last `@`.
        let clean = !credentials.contains(['/', '?', '#', ',', ' ']);
        match NatsUrl::parse(&url) {
            Ok(u) => {
                prop_assert!(clean, "accepted {url}");
                prop_assert_eq!(u.host(), host.as_str());
                check_hidden(&words, "Display", &u.to_string())?;
                check_hidden(&words, "Debug", &format!("{u:?}"))?;
                check_hidden(&words, "redacted", &u.redacted())?;
                check_hidden(&words, "Serialize", &serde_json::to_string(&u).unwrap())?;
            }
            Err(e) => {
                prop_assert!(!clean, "refused {url}: {e}");
                check_hidden(&words, "error", &format!("{e} {e:?}"))?;
            }
        }

        // In a list, given to the builder, or read from either variable. A password holding
        // `,scheme://` reads exactly like two URLs, so output of an accepted list is checked only
        // without one; error text is always checked.
        let list = format!("{before}{url}{after}");
        let ambiguous = credentials.contains("://");
        let accepted = |what: &str, text: String| {
            if ambiguous { Ok(()) } else { check_hidden(&words, what, &text) }
        };
        match NatsUrls::parse(&list) {
            Ok(urls) => {
                accepted("list Display", urls.to_string())?;
                accepted("list Debug", format!("{urls:?}"))?;
                accepted("list Serialize", serde_json::to_string(&urls).unwrap())?;
            }
            Err(e) => check_hidden(&words, "list error", &format!("{e} {e:?}"))?,
        }
        let base = [("NATS_ENV", "production"), ("APP_NAME", "orders"), ("DESTINATION_APP", "billing")];
        let builders = [
            Config::builder("production", "orders", "billing").nats_urls(list.clone()),
            ConfigBuilder::from_env_pairs(base.into_iter().chain([("NATS_URLS", list.as_str())])),
            ConfigBuilder::from_env_pairs(base.into_iter().chain([("NATS_URL", list.as_str())])),
        ];
        for builder in builders {
            check_hidden(&words, "builder Debug", &format!("{builder:?}"))?;
            match builder.build() {
                Ok(config) => {
                    accepted("config Debug", format!("{config:?}"))?;
                    accepted("config Serialize", serde_json::to_string(&config).unwrap())?;
                }
                Err(e) => check_hidden(&words, "config error", &format!("{e} {e:?}"))?,
            }
        }
    }
}

/// The fuzz findings, through every entry point.
#[test]
fn fuzz_findings_are_refused_without_showing_credentials() {
    for (url, reason) in [
        (
            "nats://admin:s3cr3t,Pass@nats.example.com:4222",
            NatsUrlError::UnexpectedComma,
        ),
        (
            "nats://Zm9vYmFy/YmF6+cXV4=@nats.example.com",
            NatsUrlError::UnencodedCredentials,
        ),
        (
            "nats://admin:1234?s3cr3t@nats.example.com",
            NatsUrlError::UnencodedCredentials,
        ),
    ] {
        assert_eq!(NatsUrl::parse(url).unwrap_err(), reason, "{url}");
        let base = [
            ("NATS_ENV", "production"),
            ("APP_NAME", "orders"),
            ("DESTINATION_APP", "billing"),
        ];
        for (var, builder) in [
            (
                None,
                Config::builder("production", "orders", "billing").nats_urls(url),
            ),
            (
                Some("NATS_URLS"),
                ConfigBuilder::from_env_pairs(base.into_iter().chain([("NATS_URLS", url)])),
            ),
            (
                Some("NATS_URL"),
                ConfigBuilder::from_env_pairs(base.into_iter().chain([("NATS_URL", url)])),
            ),
        ] {
            let debug = format!("{builder:?}");
            let e = builder.build().unwrap_err();
            assert_eq!(e.env_var_for("nats_urls"), var);
            let text = format!("{debug} {e} {e:?}");
            for secret in ["s3cr3t", "Pass", "Zm9v", "YmF6", "1234"] {
                assert!(!text.contains(secret), "{url}: {text}");
            }
            assert!(text.contains("percent-encode"), "{text}");
        }
        assert!(NatsUrls::parse(url).is_err());
    }
}

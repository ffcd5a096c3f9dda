//! Policy behaviour of the real example plugins through `PluginHost`: ACL allow/deny, rewrite,
//! TTL clamping, chaining, settings from TOML, and refusals at load (wrong world, broken file,
//! WIT version mismatch) — plus `check_file`.

use std::borrow::Cow;
use std::time::Duration;

use lockbroker::plugins::{
    LockMode, Operation, PluginError, PluginHost, PluginKind, PolicyRequest, check_file,
    parse_plugin_tables,
};

use crate::support::plugins::*;

const RULES: &str = "alice=orders/:rw,locks/:r; bob=reports/:r; default=home/{principal}/:rw";

fn acl_host(extra: &[(&str, &str)]) -> (PluginHost, tempfile::TempDir) {
    let cache = tempdir();
    let mut acl =
        settings("acl", "key_prefix_acl", PluginKind::KeyPolicy).with_config("rules", RULES);
    for (k, v) in extra {
        acl = acl.with_config(*k, *v);
    }
    let host = PluginHost::load(vec![acl], cache.path()).expect("load acl");
    (host, cache)
}

#[tokio::test]
async fn acl_allows_and_denies_by_principal_and_right() {
    let (host, _cache) = acl_host(&[]);
    assert!(!host.is_empty());

    let out = host
        .evaluate(excl("alice", b"orders/42"))
        .await
        .expect("alice may lock orders/");
    assert_eq!(out.key, Cow::Borrowed(&b"orders/42"[..]));
    assert!(!out.rewritten);
    assert!(
        matches!(out.key, Cow::Borrowed(_)),
        "unchanged key stays borrowed"
    );

    // alice has only `r` on locks/: shared ok, exclusive and semaphore denied, inspect/wait ok
    assert!(
        host.evaluate(acquire("alice", b"locks/a", LockMode::Shared, 0))
            .await
            .is_ok()
    );
    let deny = host.evaluate(excl("alice", b"locks/a")).await.unwrap_err();
    assert!(deny.contains("alice") && deny.contains("locks/a"), "{deny}");
    assert!(
        host.evaluate(acquire("alice", b"locks/a", LockMode::Semaphore(3), 0))
            .await
            .is_err()
    );
    for op in [Operation::Inspect, Operation::Wait] {
        let req = PolicyRequest {
            op,
            mode: LockMode::Shared,
            ..excl("alice", b"locks/a")
        };
        assert!(host.evaluate(req).await.is_ok(), "{op:?}");
    }

    // bob: reports/ read-only, nothing else
    assert!(
        host.evaluate(acquire("bob", b"reports/q3", LockMode::Shared, 0))
            .await
            .is_ok()
    );
    let deny = host.evaluate(excl("bob", b"orders/42")).await.unwrap_err();
    assert!(
        deny.contains("`bob`") && deny.contains("orders/42"),
        "{deny}"
    );

    // anyone else: the `default` entry with {principal} expansion
    assert!(host.evaluate(excl("carol", b"home/carol/x")).await.is_ok());
    let deny = host
        .evaluate(excl("carol", b"home/dave/x"))
        .await
        .unwrap_err();
    assert!(
        deny.contains("carol") && deny.contains("home/dave/x"),
        "{deny}"
    );

    let stats = host.stats();
    let acl = stats.get("acl").unwrap();
    assert!(acl.calls >= 10, "{stats}");
    assert_eq!(acl.errors, 0, "{stats}");
}

#[tokio::test]
async fn acl_without_default_denies_unknown_principals_and_bad_rules_fail_closed() {
    let cache = tempdir();
    let strict = settings("strict", "key_prefix_acl", PluginKind::KeyPolicy)
        .with_config("rules", "alice=:rw");
    let host = PluginHost::load(vec![strict], cache.path()).unwrap();
    assert!(host.evaluate(excl("alice", b"anything")).await.is_ok());
    let deny = host
        .evaluate(excl("mallory", b"anything"))
        .await
        .unwrap_err();
    assert!(
        deny.contains("mallory") && deny.contains("no rule"),
        "{deny}"
    );

    let broken = settings("broken", "key_prefix_acl", PluginKind::KeyPolicy)
        .with_config("rules", "alice=orders/:x");
    let host = PluginHost::load(vec![broken], cache.path()).unwrap();
    let deny = host.evaluate(excl("alice", b"orders/1")).await.unwrap_err();
    assert!(deny.contains("bad `rules`"), "{deny}");
    // a plugin-level denial is a decision, not a fault
    assert_eq!(host.stats().get("broken").unwrap().errors, 0);
}

#[tokio::test]
async fn acl_rewrites_keys_under_a_tenant_prefix() {
    let (host, _cache) = acl_host(&[("rewrite_prefix", "tenant/{principal}/")]);
    let out = host.evaluate(excl("alice", b"orders/42")).await.unwrap();
    assert!(out.rewritten);
    assert_eq!(&*out.key, b"tenant/alice/orders/42");
    assert!(matches!(out.key, Cow::Owned(_)));
    // denied requests are not rewritten
    assert!(host.evaluate(excl("bob", b"orders/42")).await.is_err());
    // a rewrite that would exceed 1 KiB is denied by the plugin itself
    let mut key = b"home/carol/".to_vec();
    key.resize(1024, b'x'); // at the limit; the tenant prefix would push it over
    let deny = host.evaluate(excl("carol", &key)).await.unwrap_err();
    assert!(deny.contains("too long"), "{deny}");
}

#[tokio::test]
async fn ttl_clamp_defaults_and_clamps_per_prefix() {
    let cache = tempdir();
    let ttl = settings("ttl", "ttl_clamp", PluginKind::TtlPolicy)
        .with_config("default_ms", "10000")
        .with_config("max_ms", "60000")
        .with_config("rules", "jobs/=min:1000,default:5000;cache/=max:2000");
    let host = PluginHost::load(vec![ttl], cache.path()).unwrap();
    let ttl_of = |key: &'static [u8], ms: u64| {
        let host = &host;
        async move {
            host.evaluate(acquire("svc", key, LockMode::Exclusive, ms))
                .await
                .unwrap()
                .ttl
        }
    };
    assert_eq!(ttl_of(b"other", 0).await, Duration::from_secs(10));
    assert_eq!(ttl_of(b"other", 3000).await, Duration::from_secs(3));
    assert_eq!(ttl_of(b"other", 3_600_000).await, Duration::from_secs(60));
    assert_eq!(ttl_of(b"jobs/a", 0).await, Duration::from_secs(5));
    assert_eq!(ttl_of(b"jobs/a", 10).await, Duration::from_secs(1));
    assert_eq!(ttl_of(b"cache/x", 0).await, Duration::from_secs(2));

    let bad = settings("bad", "ttl_clamp", PluginKind::TtlPolicy).with_config("min_ms", "nope");
    let host = PluginHost::load(vec![bad], cache.path()).unwrap();
    let deny = host.evaluate(excl("svc", b"k")).await.unwrap_err();
    assert!(
        deny.contains("ttl-clamp") && deny.contains("min_ms"),
        "{deny}"
    );
}

#[tokio::test]
async fn policies_chain_in_config_order() {
    let cache = tempdir();
    // 1. ACL with tenant rewrite; 2. the template (denies tenant/alice/forbidden/…, as it sees
    // the rewritten key); 3. ttl-clamp keyed on the rewritten key; 4. a second TTL policy that
    // passes the previous grant through.
    let plugins = vec![
        settings("acl", "key_prefix_acl", PluginKind::KeyPolicy)
            .with_config("rules", RULES)
            .with_config("rewrite_prefix", "tenant/{principal}/"),
        settings("template", "template_key_policy", PluginKind::KeyPolicy)
            .with_config("deny_prefix", "tenant/alice/orders/secret"),
        settings("ttl", "ttl_clamp", PluginKind::TtlPolicy)
            .with_config("rules", "tenant/alice/=default:7000,max:8000"),
        settings("pass", "fault_ttl", PluginKind::TtlPolicy),
    ];
    let host = PluginHost::load(plugins, cache.path()).unwrap();

    let out = host.evaluate(excl("alice", b"orders/1")).await.unwrap();
    assert_eq!(&*out.key, b"tenant/alice/orders/1");
    assert!(out.rewritten);
    assert_eq!(
        out.ttl,
        Duration::from_millis(7000),
        "ttl policy saw the rewritten key"
    );

    let out = host
        .evaluate(acquire("alice", b"orders/1", LockMode::Exclusive, 60_000))
        .await
        .unwrap();
    assert_eq!(
        out.ttl,
        Duration::from_millis(8000),
        "clamped, then passed through"
    );

    let deny = host
        .evaluate(excl("alice", b"orders/secret/1"))
        .await
        .unwrap_err();
    assert!(
        deny.starts_with("template:"),
        "second key policy saw the rewrite: {deny}"
    );

    // the first policy's denial stops the chain: the template is not called
    let before = host.stats().get("template").unwrap().calls;
    assert!(host.evaluate(excl("bob", b"orders/1")).await.is_err());
    assert_eq!(host.stats().get("template").unwrap().calls, before);
}

/// `decision_cache = N`: a repeated request is answered from the cache without a call (allow,
/// rewrite, deny and TTL grants alike), every field of the request is part of the cache key,
/// the chain's rewrite feeds the next policy's cached decision, and the chain's answers are the
/// same as without the cache.
#[tokio::test]
async fn decision_cache_replays_decisions_without_calls() {
    let cache = tempdir();
    let chain = |entries: usize| {
        vec![
            settings("acl", "key_prefix_acl", PluginKind::KeyPolicy)
                .with_config("rules", RULES)
                .with_config("rewrite_prefix", "tenant/{principal}/")
                .with_decision_cache(entries),
            settings("ttl", "ttl_clamp", PluginKind::TtlPolicy)
                .with_config("rules", "tenant/alice/=default:7000,max:8000")
                .with_decision_cache(entries),
        ]
    };
    let cached = PluginHost::load(chain(64), cache.path()).unwrap();
    let plain = PluginHost::load(chain(0), cache.path()).unwrap();
    let requests = [
        excl("alice", b"orders/1"),
        acquire("alice", b"orders/1", LockMode::Exclusive, 60_000),
        acquire("alice", b"orders/1", LockMode::Shared, 60_000),
        excl("alice", b"orders/2"),
        excl("bob", b"orders/1"),
        excl("alic", b"eorders/1"),
    ];
    for round in 0..3 {
        for req in requests {
            assert_eq!(
                cached.evaluate(req).await,
                plain.evaluate(req).await,
                "round {round}: {req:?}"
            );
        }
    }
    let acl = cached.stats().get("acl").unwrap().clone();
    let ttl = cached.stats().get("ttl").unwrap().clone();
    // six distinct requests: each called once, then replayed twice
    assert_eq!((acl.calls, acl.decision_cache_hits), (6, 12), "{acl:?}");
    // the TTL policy sees only the allowed ones (bob and alic are denied by the ACL)
    assert_eq!((ttl.calls, ttl.decision_cache_hits), (4, 8), "{ttl:?}");
    let plain_acl = plain.stats().get("acl").unwrap().clone();
    assert_eq!((plain_acl.calls, plain_acl.decision_cache_hits), (18, 0));
    assert_eq!(acl.errors + ttl.errors, 0);
}

#[test]
fn decision_cache_settings_are_validated() {
    let toml = r#"
        [[plugin]]
        name = "acl"
        path = "acl.wasm"
        kind = "key-policy"
        decision_cache = 4096
    "#;
    assert_eq!(parse_plugin_tables(toml).unwrap()[0].decision_cache, 4096);
    let too_big = toml.replace("4096", "100000000");
    let err = parse_plugin_tables(&too_big).unwrap_err().to_string();
    assert!(err.contains("decision_cache"), "{err}");
    let mirror = toml.replace("key-policy", "mirror");
    let err = parse_plugin_tables(&mirror).unwrap_err().to_string();
    assert!(err.contains("decision_cache"), "{err}");
}

#[tokio::test]
async fn empty_host_is_a_pass_through() {
    let cache = tempdir();
    let host = PluginHost::load(Vec::new(), cache.path()).unwrap();
    assert!(host.is_empty());
    let out = host
        .evaluate(acquire("x", b"k", LockMode::Shared, 1234))
        .await
        .unwrap();
    assert_eq!(&*out.key, b"k");
    assert_eq!(out.ttl, Duration::from_millis(1234));
    assert!(host.reload().unwrap().reloaded.is_empty());
    assert!(host.stats().plugins.is_empty());
}

#[tokio::test]
async fn settings_from_toml_load_the_real_plugins() {
    let cache = tempdir();
    let toml = format!(
        r#"
        [[plugin]]
        name = "acl"
        path = "{acl}"
        kind = "key-policy"
        on_error = "deny"
        time_budget_ms = 1
        memory_limit_mb = 16
        [plugin.config]
        rules = "alice=orders/:rw;bob=reports/:r"

        [[plugin]]
        name = "ttl"
        path = "{ttl}"
        kind = "ttl-policy"
        [plugin.config]
        max_ms = 5000
        "#,
        acl = plugin("key_prefix_acl").display(),
        ttl = plugin("ttl_clamp").display(),
    );
    let host = PluginHost::load(parse_plugin_tables(&toml).unwrap(), cache.path()).unwrap();
    let out = host
        .evaluate(acquire("alice", b"orders/1", LockMode::Exclusive, 9000))
        .await
        .unwrap();
    assert_eq!(out.ttl, Duration::from_millis(5000));
    assert!(host.evaluate(excl("bob", b"orders/1")).await.is_err());
}

#[test]
fn wrong_world_is_refused_naming_both() {
    let cache = tempdir();
    let err = PluginHost::load(
        vec![settings("ttl", "key_prefix_acl", PluginKind::TtlPolicy)],
        cache.path(),
    )
    .err()
    .expect("a key policy is not a ttl policy");
    assert!(matches!(err, PluginError::WrongWorld { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("key_prefix_acl.wasm")
            && msg.contains("`ttl-policy`")
            && msg.contains("`key-policy`"),
        "{msg}"
    );
}

#[test]
fn broken_and_missing_files_are_refused_naming_the_file() {
    let dir = tempdir();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x0d\0\x01\0garbage").unwrap();
    let err = PluginHost::load(
        vec![lockbroker::plugins::PluginSettings::new(
            "b",
            &broken,
            PluginKind::KeyPolicy,
        )],
        dir.path(),
    )
    .err()
    .expect("garbage is refused");
    let msg = err.to_string();
    assert!(matches!(err, PluginError::Invalid { .. }), "{msg}");
    assert!(msg.contains("broken.wasm") && msg.contains("`b`"), "{msg}");

    // a core module is not a component
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = PluginHost::load(
        vec![lockbroker::plugins::PluginSettings::new(
            "c",
            &core,
            PluginKind::KeyPolicy,
        )],
        dir.path(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("core.wasm"), "{err}");

    let missing = dir.path().join("missing.wasm");
    let err = PluginHost::load(
        vec![lockbroker::plugins::PluginSettings::new(
            "m",
            &missing,
            PluginKind::KeyPolicy,
        )],
        dir.path(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, PluginError::Read { .. }), "{err}");
    assert!(err.to_string().contains("missing.wasm"), "{err}");
}

#[test]
fn version_mismatch_is_refused_naming_both_versions() {
    let cache = tempdir();
    let err = PluginHost::load(
        vec![settings("old", "version_mismatch", PluginKind::KeyPolicy)],
        cache.path(),
    )
    .err()
    .expect("a 0.2 plugin is refused by a 0.1 host");
    let msg = err.to_string();
    assert!(matches!(err, PluginError::VersionMismatch { .. }), "{msg}");
    assert!(msg.contains("lockbroker:plugin@0.2.0"), "{msg}");
    assert!(msg.contains("lockbroker:plugin@0.1.0"), "{msg}");
    assert!(msg.contains("version_mismatch.wasm"), "{msg}");

    let err = check_file(&plugin("version_mismatch")).unwrap_err();
    assert!(
        err.to_string().contains("0.2.0") && err.to_string().contains("0.1.0"),
        "{err}"
    );
}

#[test]
fn duplicate_names_and_mirror_kind_are_refused() {
    let cache = tempdir();
    let a = settings("same", "template_key_policy", PluginKind::KeyPolicy);
    let err = PluginHost::load(vec![a.clone(), a], cache.path())
        .err()
        .unwrap();
    assert!(err.to_string().contains("same"), "{err}");
    let m = settings("m", "template_key_policy", PluginKind::Mirror);
    let err = PluginHost::load(vec![m], cache.path()).err().unwrap();
    assert!(matches!(err, PluginError::Unsupported { .. }), "{err}");
}

#[test]
fn check_file_reports_world_version_and_smoke_call() {
    let report = check_file(&plugin("template_key_policy")).expect("template checks out");
    assert_eq!(report.kind, PluginKind::KeyPolicy);
    assert_eq!(report.wit_version, "0.1.0");
    assert_eq!(report.smoke_result.as_deref(), Some("allow"));
    let text = report.to_string();
    assert!(
        text.contains("key-policy") && text.contains("smoke call"),
        "{text}"
    );
    assert!(
        report
            .imports
            .iter()
            .any(|i| i.starts_with("lockbroker:plugin/host@0.1.0")),
        "{text}"
    );

    let report = check_file(&plugin("ttl_clamp")).unwrap();
    assert_eq!(report.kind, PluginKind::TtlPolicy);
    assert_eq!(report.smoke_result.as_deref(), Some("ttl 30000 ms"));

    let report = check_file(&plugin("key_prefix_acl")).unwrap();
    assert!(
        report
            .smoke_result
            .unwrap()
            .contains("rules` setting is missing")
    );

    let dir = tempdir();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let err = check_file(&junk).unwrap_err();
    assert!(err.to_string().contains("junk.wasm"), "{err}");
}

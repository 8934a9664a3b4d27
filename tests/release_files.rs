//! The files releases and deployments are made of: the GitHub workflows, the Dockerfile, the
//! compose file, the Kubernetes manifests, the changelog, and the version the binary reports.
//!
//! `.ci/lint-deploy` (run by `.ci/run`) adds actionlint over the workflows and schema
//! validation of the Kubernetes manifests; these tests pin what those tools cannot know: that
//! the pieces agree with each other and with how chatgate behaves.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|err| panic!("read {rel}: {err}"))
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|err| panic!("{rel} is not YAML: {err}"))
}

fn yaml(rel: &str) -> Yaml {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

fn text<'a>(node: &'a Yaml, what: &str) -> &'a str {
    node.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {node:?}"))
}

fn list<'a>(node: &'a Yaml, what: &str) -> &'a [Yaml] {
    node.as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {node:?}"))
}

fn int(node: &Yaml, what: &str) -> i64 {
    node.as_i64()
        .unwrap_or_else(|| panic!("{what}: expected an integer, got {node:?}"))
}

/// Every string scalar in the document (keys and values), so checks see `run:` scripts and
/// `with:` inputs but not comments.
fn strings(node: &Yaml, out: &mut Vec<String>) {
    match node {
        Yaml::String(s) => out.push(s.clone()),
        Yaml::Array(items) => items.iter().for_each(|item| strings(item, out)),
        Yaml::Hash(map) => map.iter().for_each(|(k, v)| {
            strings(k, out);
            strings(v, out);
        }),
        _ => {}
    }
}

/// Resolves compose's `<<: *anchor` merge keys (YAML 1.1, which the 1.2 parser leaves as a
/// plain `<<` key holding a copy of the anchored mapping). Keys written next to `<<` win.
fn merged(node: &Yaml) -> Yaml {
    match node {
        Yaml::Hash(map) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            if let Some(base) = map.get(&Yaml::String("<<".into())) {
                if let Yaml::Hash(base) = merged(base) {
                    out.extend(base);
                }
            }
            for (k, v) in map {
                if k.as_str() != Some("<<") {
                    out.insert(k.clone(), merged(v));
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(items) => Yaml::Array(items.iter().map(merged).collect()),
        other => other.clone(),
    }
}

fn workflow_files() -> Vec<PathBuf> {
    let dir = repo().join(".github/workflows");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("read {}: {err}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .collect();
    files.sort();
    files
}

/// All steps of all jobs of a workflow.
fn steps(workflow: &Yaml) -> Vec<&Yaml> {
    let jobs = workflow["jobs"].as_hash().expect("jobs");
    jobs.values()
        .flat_map(|job| {
            job["steps"]
                .as_vec()
                .map(|s| s.iter())
                .into_iter()
                .flatten()
        })
        .collect()
}

fn steps_using<'a>(workflow: &'a Yaml, action: &str) -> Vec<&'a Yaml> {
    steps(workflow)
        .into_iter()
        .filter(|step| {
            step["uses"]
                .as_str()
                .is_some_and(|uses| uses.split('@').next() == Some(action))
        })
        .collect()
}

fn run_scripts(workflow: &Yaml) -> String {
    steps(workflow)
        .into_iter()
        .filter_map(|step| step["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- workflows ---------------------------------------------------------------------------

#[test]
fn release_and_docker_workflows_share_one_tag_trigger() {
    let release = yaml(".github/workflows/release.yml");
    let docker = yaml(".github/workflows/docker.yml");
    assert_eq!(
        release["on"], docker["on"],
        "release.yml and docker.yml must be triggered by the same events"
    );
    let on = release["on"].as_hash().expect("on: must be a mapping");
    assert_eq!(on.len(), 1, "only a pushed tag may start a release: {on:?}");
    let push = &release["on"]["push"];
    let tags: Vec<&str> = list(&push["tags"], "on.push.tags")
        .iter()
        .map(|t| text(t, "tag pattern"))
        .collect();
    assert_eq!(tags, ["v*.*.*"]);
    assert!(
        push["branches"].is_badvalue(),
        "a release trigger must not also fire on branch pushes"
    );
}

#[test]
fn docker_workflow_caches_layers_and_labels_the_image() {
    let docker = yaml(".github/workflows/docker.yml");
    let builds = steps_using(&docker, "docker/build-push-action");
    let push = builds
        .iter()
        .find(|step| step["with"]["push"].as_bool() == Some(true))
        .expect("a build-push-action step with push: true");
    let with = &push["with"];
    let cache_from = text(&with["cache-from"], "cache-from");
    let cache_to = text(&with["cache-to"], "cache-to");
    assert!(cache_from.starts_with("type=gha") || cache_from.starts_with("type=registry"));
    assert!(cache_to.starts_with("type=gha") || cache_to.starts_with("type=registry"));
    assert!(
        cache_to.contains("mode=max"),
        "cache every stage: {cache_to}"
    );

    let platforms = text(&with["platforms"], "platforms");
    for platform in ["linux/amd64", "linux/arm64"] {
        assert!(
            platforms.contains(platform),
            "missing {platform}: {platforms}"
        );
    }

    // OCI labels: docker/metadata-action computes version, revision, created and source from
    // the tag and commit; the push step applies them and passes the same values to the
    // Dockerfile's ARGs (which label the image on their own, see the Dockerfile test).
    assert_eq!(
        text(&with["labels"], "labels"),
        "${{ steps.meta.outputs.labels }}"
    );
    let meta = steps_using(&docker, "docker/metadata-action");
    assert_eq!(meta.len(), 1, "one docker/metadata-action step");
    assert_eq!(text(&meta[0]["id"], "metadata step id"), "meta");
    let dockerfile_args = dockerfile_runtime_args();
    for build in &builds {
        let args = text(&build["with"]["build-args"], "build-args");
        for arg in ["VERSION", "REVISION", "CREATED", "SOURCE"] {
            let line = args
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{arg}=")))
                .unwrap_or_else(|| panic!("build-args lack {arg}: {args}"));
            assert!(line.contains("${{"), "{arg} must come from the run: {line}");
            assert!(
                dockerfile_args.contains(&arg.to_string()),
                "the Dockerfile does not declare ARG {arg}"
            );
        }
        assert!(
            args.contains("REVISION=${{ github.sha }}"),
            "revision = the tagged commit: {args}"
        );
    }
}

#[test]
fn docker_tags_come_from_the_git_tag_only() {
    let docker = yaml(".github/workflows/docker.yml");
    let meta = steps_using(&docker, "docker/metadata-action");
    let with = &meta[0]["with"];
    let tags: Vec<&str> = text(&with["tags"], "tags")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        tags.contains(&"type=semver,pattern={{version}}"),
        "{tags:?}"
    );
    assert!(
        tags.contains(&"type=semver,pattern={{major}}.{{minor}}"),
        "{tags:?}"
    );
    // `latest` only for non-prereleases (no `-` in the tag), and nothing else implicit.
    assert!(
        tags.contains(&"type=raw,value=latest,enable=${{ !contains(github.ref_name, '-') }}"),
        "{tags:?}"
    );
    assert_eq!(tags.len(), 3, "no branch, sha or edge tags: {tags:?}");
    assert!(text(&with["flavor"], "flavor").contains("latest=false"));
}

#[test]
fn no_workflow_derives_a_version_from_git_describe() {
    let files = workflow_files();
    assert!(
        files.len() >= 3,
        "ci, release and docker workflows: {files:?}"
    );
    for file in &files {
        let rel = file.strip_prefix(repo()).unwrap().to_string_lossy();
        let mut all = Vec::new();
        strings(&yaml(&rel), &mut all);
        for s in &all {
            assert!(
                !s.contains("git describe") && !s.contains("--dirty"),
                "{rel}: versions come from the tag, not from `git describe`: {s}"
            );
        }
    }
    // Nor does the image build.
    for line in read("Dockerfile").lines() {
        if !line.trim_start().starts_with('#') {
            assert!(!line.contains("git describe"), "Dockerfile: {line}");
        }
    }
}

#[test]
fn release_workflow_checks_the_version_and_publishes_sums_and_notes() {
    let release = yaml(".github/workflows/release.yml");
    let targets: Vec<&str> = list(
        &release["jobs"]["build"]["strategy"]["matrix"]["include"],
        "matrix",
    )
    .iter()
    .map(|entry| text(&entry["target"], "matrix target"))
    .collect();
    assert_eq!(
        targets,
        ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"]
    );
    let scripts = run_scripts(&release);
    for needle in [
        "--version",               // the built binary is asked for its version
        "\"chatgate ${VERSION}\"", // and it must equal the tag's
        "${GITHUB_REF_NAME#v}",    // the version is the tag without its `v`
        "sha256sum",               // checksums
        "SHA256SUMS",              // one file with all of them
        ".ci/changelog-notes",     // notes from CHANGELOG.md
        "gh release create",       // the GitHub release
        "--locked",                // exactly the dependencies of Cargo.lock
    ] {
        assert!(
            scripts.contains(needle),
            "release.yml never runs `{needle}`"
        );
    }
}

#[test]
fn ci_workflow_runs_the_same_gates_as_ci_run() {
    let ci = yaml(".github/workflows/ci.yml");
    assert!(
        !ci["on"]["pull_request"].is_badvalue(),
        "CI on pull requests"
    );
    let branches: Vec<&str> = list(&ci["on"]["push"]["branches"], "push branches")
        .iter()
        .map(|b| text(b, "branch"))
        .collect();
    assert_eq!(branches, ["main"]);

    let scripts = run_scripts(&ci);
    for needle in [
        "cargo fmt --check",
        "cargo clippy --locked --all-targets -- -D warnings",
        "cargo test --locked -- --include-ignored", // the PostgreSQL and Redis tests too
        "cargo metadata --locked",                  // Cargo.lock is current
        "bash .ci/lint-deploy",                     // actionlint + Kubernetes manifests, as .ci/run
        "tests/compat/openai_compat.py",
        "tests/browser",
        "chromium",
    ] {
        assert!(scripts.contains(needle), "ci.yml never runs `{needle}`");
    }
    assert_eq!(steps_using(&ci, "EmbarkStudios/cargo-deny-action").len(), 1);
    assert!(
        repo().join("deny.toml").is_file(),
        "cargo deny needs deny.toml"
    );

    let services = &ci["jobs"]["test"]["services"];
    let image = text(&services["postgres"]["image"], "postgres service image");
    assert!(image.starts_with("postgres:15"), "{image}");
    let url = text(
        &ci["jobs"]["test"]["env"]["TEST_POSTGRES_URL"],
        "TEST_POSTGRES_URL",
    );
    assert!(url.starts_with("postgres://"), "{url}");
    let redis = text(
        &ci["jobs"]["test"]["env"]["TEST_REDIS_URL"],
        "TEST_REDIS_URL",
    );
    assert!(redis.starts_with("redis://"), "{redis}");
    let ci_run = read(".ci/run");
    for needle in [
        "export TEST_POSTGRES_URL=",
        "export TEST_REDIS_URL=",
        "cargo test --locked -- --include-ignored",
    ] {
        assert!(ci_run.contains(needle), ".ci/run never has `{needle}`");
    }

    // Every job that compiles caches the registry and target directory.
    for (name, job) in ci["jobs"].as_hash().expect("jobs") {
        let name = name.as_str().unwrap_or_default();
        let compiles = job["steps"].as_vec().into_iter().flatten().any(|step| {
            step["run"]
                .as_str()
                .is_some_and(|run| run.contains("cargo "))
        });
        let caches = job["steps"].as_vec().into_iter().flatten().any(|step| {
            step["uses"].as_str().is_some_and(|uses| {
                uses.starts_with("Swatinem/rust-cache@") || uses.starts_with("actions/cache@")
            })
        });
        assert!(!compiles || caches, "job {name} compiles without a cache");
    }
}

// ---- Dockerfile --------------------------------------------------------------------------

/// ARGs declared in the last (runtime) stage.
fn dockerfile_runtime_args() -> Vec<String> {
    let dockerfile = read("Dockerfile");
    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, last)| last)
        .expect("a FROM line");
    runtime
        .lines()
        .filter_map(|l| l.strip_prefix("ARG "))
        .map(|a| a.split('=').next().unwrap_or(a).trim().to_string())
        .collect()
}

#[test]
fn dockerfile_labels_the_image_with_version_and_revision() {
    let dockerfile = read("Dockerfile");
    let stages = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage build");
    let args = dockerfile_runtime_args();
    for (label, arg) in [
        ("org.opencontainers.image.version", "VERSION"),
        ("org.opencontainers.image.revision", "REVISION"),
        ("org.opencontainers.image.created", "CREATED"),
        ("org.opencontainers.image.source", "SOURCE"),
    ] {
        assert!(
            args.contains(&arg.to_string()),
            "runtime stage lacks ARG {arg}"
        );
        assert!(
            dockerfile.contains(&format!("{label}=\"${{{arg}}}\"")),
            "label {label} must be set from ARG {arg}"
        );
    }
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.trim().parse().ok())
        .unwrap_or_else(|| panic!("USER must be numeric (runAsNonRoot): {user}"));
    assert_ne!(uid, 0, "the image must not run as root");
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/healthz"));
}

#[test]
fn dockerfile_builds_with_the_crate_rust_version() {
    let dockerfile = read("Dockerfile");
    let version = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("ARG RUST_VERSION=");
    assert_eq!(
        version.trim(),
        env!("CARGO_PKG_RUST_VERSION"),
        "the Dockerfile's rustc and Cargo.toml's rust-version must agree"
    );
}

/// The release profile strips debug info, and the Dockerfile and release.yml ship that profile's
/// output and check it has no `.debug_*` section left.
#[test]
fn shipped_binaries_are_stripped() {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let release = &manifest["profile"]["release"];
    let strip = release.get("strip").map(|v| v.to_string());
    assert!(
        matches!(
            strip.as_deref(),
            Some("\"debuginfo\"") | Some("\"symbols\"") | Some("true")
        ),
        "[profile.release] must strip debug info: strip = {strip:?}"
    );
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("cargo build --release --locked --bin chatgate"),
        "the image is built with the release profile"
    );
    assert!(
        dockerfile.contains("COPY --from=build /src/target/release/chatgate "),
        "the image ships the release profile's binary"
    );
    assert!(
        dockerfile.contains("readelf -S target/release/chatgate | grep -q '\\.debug_'"),
        "the Dockerfile checks the binary has no debug sections"
    );

    let release_yml = yaml(".github/workflows/release.yml");
    let scripts = run_scripts(&release_yml);
    assert!(scripts.contains("cargo zigbuild --release --locked --bin chatgate"));
    assert!(
        !scripts.contains("--profile"),
        "release.yml ships another profile"
    );
    assert!(
        scripts.contains("readelf -S \"$bin\" | grep -q '\\.debug_'"),
        "release.yml checks the binary has no debug sections"
    );
    for (name, value) in release_yml["env"].as_hash().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        assert!(
            !name.starts_with("CARGO_PROFILE_RELEASE_"),
            "release.yml overrides the release profile: {name}: {value:?}"
        );
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|err| panic!("run {cmd:?}: {err}"))
}

/// The host triple, so `cargo fetch` checks only packages this build already downloaded.
fn host_triple() -> String {
    let out =
        run(Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())).arg("-vV"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV prints the host")
        .to_string()
}

#[test]
fn docker_deps_stage_stubs_every_declared_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut manifest = read("Cargo.toml");
    manifest.push_str(
        "\n[[bench]]\nname = \"throughput\"  # a later benchmark\nharness = false\n\
         \n[[bench]]\nname = 'custom'\npath = \"perf/custom.rs\"\n\
         \n[[example]]\nname = \"client\"\n\n[[test]]\nname = \"extra\"\n",
    );
    fs::write(dir.path().join("Cargo.toml"), manifest).expect("write Cargo.toml");
    fs::copy(repo().join("Cargo.lock"), dir.path().join("Cargo.lock")).expect("copy lock");
    let host = host_triple();
    let fetch = || {
        run(Command::new(cargo())
            .args(["fetch", "--locked", "--offline", "--target", &host])
            .current_dir(dir.path()))
    };

    // What the deps stage sees before the script: cargo refuses the manifest.
    let before = fetch();
    assert!(
        !before.status.success(),
        "cargo should refuse missing targets"
    );

    let script = repo().join("deploy/docker/stub-cargo-targets.sh");
    let out = run(Command::new("sh")
        .arg(&script)
        .arg("Cargo.toml")
        .current_dir(dir.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "src/main.rs",
        "src/lib.rs",
        "benches/throughput.rs",
        "perf/custom.rs",
        "examples/client.rs",
        "tests/extra.rs",
    ] {
        assert!(dir.path().join(file).is_file(), "no stub for {file}");
    }
    let after = fetch();
    assert!(
        after.status.success(),
        "cargo still refuses the stubbed manifest: {}",
        String::from_utf8_lossy(&after.stderr)
    );
}

// ---- compose -----------------------------------------------------------------------------

/// The `--flag value` pairs of a Redis/Valkey server's command line.
fn server_flags(args: &[&str]) -> Vec<(String, String)> {
    args.iter()
        .enumerate()
        .filter(|(_, a)| a.starts_with("--"))
        .map(|(i, a)| {
            let value = args.get(i + 1).copied().unwrap_or_default();
            (a.to_string(), value.to_string())
        })
        .collect()
}

/// What a Redis for chatgate must be: not a store of record (no snapshots, no append-only
/// file) and never evicting on its own (a full Redis must refuse writes, not drop windows or
/// sessions), with a memory bound.
fn assert_redis_is_configured_for_chatgate(what: &str, args: &[&str]) {
    let flags = server_flags(args);
    let flag = |name: &str| {
        flags
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{what}: no {name} in {args:?}"))
    };
    assert_eq!(flag("--save"), "", "{what}: no snapshots");
    assert_eq!(flag("--appendonly"), "no", "{what}: no append-only file");
    assert_eq!(flag("--maxmemory-policy"), "noeviction", "{what}");
    assert!(
        flag("--maxmemory").ends_with("mb") || flag("--maxmemory").ends_with("gb"),
        "{what}: a memory bound"
    );
}

fn is_redis_image(image: &str) -> bool {
    image.starts_with("valkey/valkey:") || image.starts_with("redis:")
}

#[test]
fn compose_runs_two_instances_on_postgres_and_redis_behind_a_websocket_proxy() {
    let compose = merged(&yaml("deploy/compose.yaml"));
    let services = compose["services"].as_hash().expect("services");
    let names: Vec<&str> = services.keys().filter_map(Yaml::as_str).collect();
    assert_eq!(
        names,
        ["postgres", "redis", "chatgate-1", "chatgate-2", "lb"]
    );

    let redis = &compose["services"]["redis"];
    assert!(
        is_redis_image(text(&redis["image"], "redis image")),
        "{redis:?}"
    );
    let command: Vec<&str> = list(&redis["command"], "redis command")
        .iter()
        .map(|a| text(a, "redis command arg"))
        .collect();
    assert!(command[0].ends_with("-server"), "{command:?}");
    assert_redis_is_configured_for_chatgate("compose redis", &command[1..]);
    let networks: Vec<&str> = list(&redis["networks"], "redis networks")
        .iter()
        .map(|n| text(n, "network"))
        .collect();
    assert_eq!(
        networks,
        ["backend"],
        "Redis is reachable by the instances only"
    );
    assert!(!redis["healthcheck"]["test"].is_badvalue());
    assert!(redis["volumes"].is_badvalue(), "nothing in Redis is kept");

    let postgres = &compose["services"]["postgres"];
    assert!(text(&postgres["image"], "postgres image").starts_with("postgres:"));
    assert!(!postgres["healthcheck"]["test"].is_badvalue());

    for name in ["chatgate-1", "chatgate-2"] {
        let svc = &compose["services"][name];
        assert_eq!(text(&svc["build"]["context"], "build context"), "..");
        let mut test = Vec::new();
        strings(&svc["healthcheck"]["test"], &mut test);
        assert!(
            test.iter().any(|s| s.ends_with("/readyz")),
            "{name}: health check on /readyz: {test:?}"
        );
        let env_files: Vec<&str> = list(&svc["env_file"], "env_file")
            .iter()
            .map(|f| text(f, "env file"))
            .collect();
        assert_eq!(
            env_files,
            ["chatgate.env"],
            "{name}: secrets from the env file"
        );
        let url = text(&svc["environment"]["DATABASE_URL"], "DATABASE_URL");
        assert!(
            url.starts_with("postgres://") && url.contains("@postgres:5432/"),
            "{name}: DATABASE_URL must point at the postgres service: {url}"
        );
        assert!(
            svc["environment"]["CHATGATE_JWT_SECRET"].is_badvalue(),
            "{name}: the JWT secret belongs in the env file, not in compose.yaml"
        );
        assert_eq!(
            text(
                &svc["depends_on"]["postgres"]["condition"],
                "depends_on.postgres"
            ),
            "service_healthy"
        );
        // Cluster mode, on the compose Redis. An instance serves while Redis is down, so
        // Redis is started first but not a health condition.
        let redis_url = text(
            &svc["environment"]["CHATGATE_REDIS_URL"],
            "CHATGATE_REDIS_URL",
        );
        assert!(
            redis_url.starts_with("redis://redis:6379"),
            "{name}: CHATGATE_REDIS_URL must point at the redis service: {redis_url}"
        );
        assert_eq!(
            text(&svc["depends_on"]["redis"]["condition"], "depends_on.redis"),
            "service_started"
        );
        assert_eq!(
            text(&svc["hostname"], "hostname"),
            name,
            "the instance id in the cluster views starts with the host name"
        );
    }

    let lb = &compose["services"]["lb"];
    assert!(text(&lb["image"], "lb image").starts_with("nginx:"));
    let mounts: Vec<&str> = list(&lb["volumes"], "lb volumes")
        .iter()
        .map(|v| text(v, "volume"))
        .collect();
    assert!(
        mounts.contains(&"./nginx.conf:/etc/nginx/nginx.conf:ro"),
        "{mounts:?}"
    );
    for name in ["chatgate-1", "chatgate-2"] {
        assert_eq!(
            text(&lb["depends_on"][name]["condition"], "lb depends_on"),
            "service_healthy"
        );
    }
    assert!(!lb["ports"].is_badvalue(), "the load balancer is published");
}

#[test]
fn nginx_proxies_websockets_to_both_instances_without_logging_tokens() {
    let conf = read("deploy/nginx.conf");
    // A cluster resumes sessions on any instance: no sticky routing anywhere.
    for line in conf.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        for sticky in ["ip_hash", "sticky", "hash "] {
            assert!(
                !line.starts_with(sticky),
                "nginx.conf routes sticky: `{line}`"
            );
        }
    }
    for needle in [
        "server chatgate-1:8080",
        "server chatgate-2:8080",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $http_host;",
        "proxy_set_header Forwarded \"\";",
    ] {
        assert!(conf.contains(needle), "nginx.conf lacks `{needle}`");
    }
    // WebSocket clients send their token in the query string; the access log must not keep it.
    let log_format = conf
        .split("log_format")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("a log_format");
    for leaky in [
        "$request ",
        "$request\"",
        "$request_uri",
        "$args",
        "$query_string",
    ] {
        assert!(!log_format.contains(leaky), "log_format logs `{leaky}`");
    }
    assert!(
        conf.lines()
            .filter(|l| l.trim_start().starts_with("access_log"))
            .all(|l| l.contains(" chatgate;")),
        "every access_log uses the token-free format"
    );
}

#[test]
fn env_file_example_holds_no_secret_and_the_real_one_stays_out_of_git() {
    let example = read("deploy/chatgate.env.example");
    let secret = example
        .lines()
        .find_map(|l| l.strip_prefix("CHATGATE_JWT_SECRET="))
        .expect("the example names CHATGATE_JWT_SECRET");
    assert_eq!(
        secret.trim(),
        "",
        "the example must not ship a usable secret"
    );
    assert!(read(".gitignore")
        .lines()
        .any(|l| l.trim() == "/deploy/*.env"));
    assert!(read(".dockerignore")
        .lines()
        .any(|l| l.trim() == "deploy/*.env"));
}

// ---- Kubernetes --------------------------------------------------------------------------

fn container_env<'a>(container: &'a Yaml, name: &str) -> Option<&'a str> {
    list(&container["env"], "env")
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["value"].as_str())
}

#[test]
fn kubernetes_deployment_is_probed_and_drains_before_it_stops() {
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    assert_eq!(text(&deployment["kind"], "kind"), "Deployment");
    let spec = &deployment["spec"];
    assert!(
        int(&spec["replicas"], "replicas") >= 2,
        "a cluster: two replicas at least"
    );
    let pod = &spec["template"]["spec"];
    let containers = list(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    assert_eq!(
        text(&c["readinessProbe"]["httpGet"]["path"], "readiness"),
        "/readyz"
    );
    assert_eq!(
        text(&c["livenessProbe"]["httpGet"]["path"], "liveness"),
        "/healthz"
    );

    // SIGKILL must never interrupt the graceful shutdown: the grace period covers the preStop
    // pause plus CHATGATE_SHUTDOWN_TIMEOUT_SECS (the contract's default when unset).
    let shutdown: i64 = container_env(c, "CHATGATE_SHUTDOWN_TIMEOUT_SECS")
        .map(|v| {
            v.parse()
                .expect("CHATGATE_SHUTDOWN_TIMEOUT_SECS is a number")
        })
        .unwrap_or(10);
    let command: Vec<&str> = list(&c["lifecycle"]["preStop"]["exec"]["command"], "preStop")
        .iter()
        .map(|a| text(a, "preStop arg"))
        .collect();
    assert_eq!(
        command.first(),
        Some(&"sleep"),
        "preStop pauses: {command:?}"
    );
    let pause: i64 = command[1].parse().expect("sleep seconds");
    assert!(pause > 0);
    let grace = int(&pod["terminationGracePeriodSeconds"], "grace period");
    assert!(
        grace > pause + shutdown,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pause} s + shutdown {shutdown} s"
    );

    let resources = &c["resources"];
    assert_eq!(
        text(&resources["requests"]["memory"], "memory request"),
        "128Mi"
    );
    assert_eq!(text(&resources["requests"]["cpu"], "cpu request"), "250m");
    assert_eq!(
        text(&resources["limits"]["memory"], "memory limit"),
        "256Mi"
    );

    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    // Secrets come from the Secret the template describes, with the keys chatgate needs.
    let from = list(&c["envFrom"], "envFrom");
    let secret_name = text(&from[0]["secretRef"]["name"], "secretRef");
    let secret = yaml("deploy/kubernetes/secret.template.yaml");
    assert_eq!(text(&secret["kind"], "kind"), "Secret");
    assert_eq!(
        text(&secret["metadata"]["name"], "secret name"),
        secret_name
    );
    for key in ["CHATGATE_JWT_SECRET", "DATABASE_URL", "CHATGATE_REDIS_URL"] {
        assert!(
            !secret["stringData"][key].is_badvalue(),
            "the Secret template lacks {key}"
        );
    }
    assert_eq!(
        text(&secret["stringData"]["CHATGATE_JWT_SECRET"], "secret"),
        "",
        "the template must not ship a usable JWT secret"
    );
    // In the Secret only: `env` would silently win over a value put in the Secret.
    for key in ["CHATGATE_JWT_SECRET", "DATABASE_URL", "CHATGATE_REDIS_URL"] {
        assert!(
            list(&c["env"], "env")
                .iter()
                .all(|e| e["name"].as_str() != Some(key)),
            "{key} belongs in the Secret, not the Deployment"
        );
    }

    // The Service reaches these pods on the container's named port.
    let service = yaml("deploy/kubernetes/service.yaml");
    assert_eq!(text(&service["kind"], "kind"), "Service");
    assert_eq!(
        service["spec"]["selector"], spec["template"]["metadata"]["labels"],
        "the Service selects the Deployment's pods"
    );
    assert_eq!(
        spec["selector"]["matchLabels"],
        spec["template"]["metadata"]["labels"]
    );
    let port_name = text(&list(&c["ports"], "ports")[0]["name"], "port name");
    assert_eq!(
        text(
            &list(&service["spec"]["ports"], "service ports")[0]["targetPort"],
            "targetPort"
        ),
        port_name
    );
    // Any replica serves any session: no affinity to keep a client on one.
    assert!(
        matches!(
            service["spec"]["sessionAffinity"].as_str(),
            None | Some("None")
        ),
        "{:?}",
        service["spec"]["sessionAffinity"]
    );
}

#[test]
fn kubernetes_redis_is_what_the_secret_points_at() {
    let docs = yaml_docs("deploy/kubernetes/redis.yaml");
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("redis.yaml has no {kind}"))
    };
    let (deployment, service) = (of_kind("Deployment"), of_kind("Service"));
    let spec = &deployment["spec"];
    assert_eq!(int(&spec["replicas"], "redis replicas"), 1);
    assert_eq!(
        text(&spec["strategy"]["type"], "strategy"),
        "Recreate",
        "never two Redis at once: the replicas would split into two clusters"
    );
    let pod_labels = spec["template"]["metadata"]["labels"]
        .as_hash()
        .expect("pod labels");
    for selector in [
        &spec["selector"]["matchLabels"],
        &service["spec"]["selector"],
    ] {
        let selector = selector.as_hash().expect("a label selector");
        assert!(!selector.is_empty());
        for (key, value) in selector {
            assert_eq!(
                pod_labels.get(key),
                Some(value),
                "the Deployment and its Service select the Redis pod by {key:?}"
            );
        }
    }
    let containers = list(&spec["template"]["spec"]["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert!(
        is_redis_image(text(&c["image"], "redis image")),
        "{:?}",
        c["image"]
    );
    let args: Vec<&str> = list(&c["args"], "redis args")
        .iter()
        .map(|a| text(a, "redis arg"))
        .collect();
    assert_redis_is_configured_for_chatgate("redis.yaml", &args);
    assert!(
        spec["template"]["spec"]["volumes"]
            .as_vec()
            .into_iter()
            .flatten()
            .all(|v| !v["emptyDir"].is_badvalue()),
        "nothing in Redis is kept: no persistent volume"
    );

    // The Secret's default URL is this Service.
    let secret = yaml("deploy/kubernetes/secret.template.yaml");
    let url = text(&secret["stringData"]["CHATGATE_REDIS_URL"], "redis url");
    let name = text(&service["metadata"]["name"], "redis service name");
    let port = int(&list(&service["spec"]["ports"], "ports")[0]["port"], "port");
    assert!(
        url.starts_with(&format!("redis://{name}:{port}")),
        "CHATGATE_REDIS_URL {url} is not the Service {name}:{port}"
    );
}

/// `bash -n` over every shell script in the repository: the benchmarks are not run by CI, so
/// this is what keeps them from rotting into syntax errors.
#[test]
fn shell_scripts_parse() {
    let mut scripts: Vec<PathBuf> = fs::read_dir(repo().join("scripts"))
        .expect("scripts/")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("sh"))
        .collect();
    scripts.extend([".ci/run", ".ci/lint-deploy"].map(|p| repo().join(p)));
    assert!(
        scripts.iter().any(|p| p.ends_with("bench_cluster.sh")),
        "{scripts:?}"
    );
    for script in &scripts {
        let out = run(Command::new("bash").arg("-n").arg(script));
        assert!(
            out.status.success(),
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---- changelog, licences, version ----------------------------------------------------------

fn changelog_notes(version: &str) -> Output {
    run(Command::new("bash")
        .arg(repo().join(".ci/changelog-notes"))
        .arg(version)
        .arg(repo().join("CHANGELOG.md")))
}

#[test]
fn changelog_has_notes_for_the_crate_version() {
    let changelog = read("CHANGELOG.md");
    assert!(
        changelog.contains("## [Unreleased]"),
        "Keep a Changelog's Unreleased section"
    );
    let out = changelog_notes(env!("CARGO_PKG_VERSION"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = String::from_utf8_lossy(&out.stdout);
    assert!(notes.contains("### Added"), "release notes: {notes}");
    assert!(
        !notes.contains("## ["),
        "only this version's section: {notes}"
    );

    let missing = changelog_notes("0.0.0-not-released");
    assert!(
        !missing.status.success(),
        "a version without notes must fail its release"
    );
}

#[test]
fn licence_files_match_the_crate_licence() {
    assert_eq!(env!("CARGO_PKG_LICENSE"), "MIT OR Apache-2.0");
    assert!(read("LICENSE-MIT").contains("Permission is hereby granted, free of charge"));
    assert!(read("LICENSE-APACHE").contains("Apache License"));
    assert!(read("LICENSE-APACHE").contains("Version 2.0, January 2004"));
    let licence = read("LICENSE");
    assert!(licence.contains("LICENSE-MIT") && licence.contains("LICENSE-APACHE"));
    let security = read("SECURITY.md");
    for needle in ["CHATGATE_JWT_SECRET", "CHATGATE_ALLOWED_ORIGINS"] {
        assert!(
            security.contains(needle),
            "SECURITY.md does not explain {needle}"
        );
    }
}

#[test]
fn chatgate_version_prints_the_crate_version() {
    let out = run(Command::new(env!("CARGO_BIN_EXE_chatgate")).arg("--version"));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("chatgate {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn stub_script_path_is_what_the_dockerfile_copies() {
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("COPY deploy/docker/stub-cargo-targets.sh "));
    assert!(Path::new(&repo().join("deploy/docker/stub-cargo-targets.sh")).is_file());
}

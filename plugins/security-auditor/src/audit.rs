//! The audit rules over an inventory snapshot; pure, so they are tested without a host.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use evolve_plugin_sdk::inventory::{
    HostSummary, PluginSource, PluginSummary, SecurityPosture, ServiceStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Recommended ceilings (the plugin's `[config]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Ceilings {
    pub max_memory_mb: u64,
    pub max_deadline_ms: u64,
    pub max_concurrency: u32,
    pub max_queue: u32,
    pub max_output_kb: u64,
    pub max_log_kb: u64,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings {
            max_memory_mb: 256,
            max_deadline_ms: 60_000,
            max_concurrency: 64,
            max_queue: 1_024,
            max_output_kb: 4_096,
            max_log_kb: 4_096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }

    pub(crate) fn is_serious(self) -> bool {
        self <= Severity::High
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    pub severity: Severity,
    pub rule: &'static str,
    /// What the finding is about: a plugin, a service, `api`.
    pub subject: String,
    pub message: String,
    pub fix: String,
}

/// What the audit looks at.
pub(crate) struct System {
    pub host: HostSummary,
    pub security: SecurityPosture,
    pub plugins: Vec<PluginSummary>,
    pub sources: Vec<PluginSource>,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug)]
pub(crate) struct Report {
    pub findings: Vec<Finding>,
}

impl System {
    pub(crate) fn audit(&self, ceilings: &Ceilings) -> Report {
        let mut findings = Vec::new();
        self.audit_api(&mut findings);
        self.audit_guards(&mut findings);
        for plugin in &self.plugins {
            audit_plugin(plugin, ceilings, &mut findings);
            audit_grants(plugin, &self.security, &mut findings);
        }
        for source in self.sources.iter().filter(|s| !s.sha256_pinned) {
            findings.push(Finding {
                severity: Severity::Medium,
                rule: "plugin.unpinned",
                subject: source.name.clone(),
                message: format!(
                    "plugin.toml in {} has no sha256 pin: any component written to that directory is loaded",
                    source.dir
                ),
                fix: "add `sha256 = \"<sha256sum of the .wasm>\"` to its plugin.toml".into(),
            });
        }
        let mut seen = BTreeMap::new();
        for status in &self.services {
            let svc = &status.service;
            if let Some(host) = plain_http_host(&svc.endpoint)
                && !is_loopback(&host)
                && seen.insert(svc.endpoint.clone(), ()).is_none()
            {
                findings.push(Finding {
                    severity: Severity::High,
                    rule: "service.plain-http",
                    subject: svc.name.clone(),
                    message: format!(
                        "instance {} is reached over plain HTTP beyond this machine: traffic can be read and altered on the way",
                        svc.endpoint
                    ),
                    fix: "use an https:// endpoint, or keep the service on loopback behind a local proxy".into(),
                });
            }
        }
        findings.sort_by(|a, b| {
            (a.severity, a.rule, &a.subject).cmp(&(b.severity, b.rule, &b.subject))
        });
        Report { findings }
    }

    fn audit_api(&self, findings: &mut Vec<Finding>) {
        let listen = &self.host.api_listen;
        let host = listen_host(listen);
        if listen.is_empty() || is_loopback(&host) {
            return;
        }
        if self.host.api_auth {
            findings.push(Finding {
                severity: Severity::Low,
                rule: "api.public",
                subject: "api".into(),
                message: format!("the API listens on {listen}, beyond loopback (tokens are required for changes; reads are open)"),
                fix: "listen on 127.0.0.1 behind a TLS-terminating proxy unless remote access is needed".into(),
            });
        } else {
            findings.push(Finding {
                severity: Severity::Critical,
                rule: "api.public-without-auth",
                subject: "api".into(),
                message: format!("the API listens on {listen}, beyond loopback, with no auth token: anyone who can reach it can run agents and reload plugins"),
                fix: "set EVOLVE_AUTH_TOKEN or [server.tokens], or listen on 127.0.0.1; remove server.allow_unauthenticated".into(),
            });
        }
    }
}

impl System {
    /// The daemon's own guards: a token on the API, a key on the cluster.
    fn audit_guards(&self, findings: &mut Vec<Finding>) {
        let security = &self.security;
        let public = {
            let host = listen_host(&self.host.api_listen);
            !self.host.api_listen.is_empty() && !is_loopback(&host)
        };
        // Beyond loopback, audit_api already reports the missing token as critical.
        if security.token_names.is_empty() && !public {
            findings.push(Finding {
                severity: Severity::Medium,
                rule: "api.no-token",
                subject: "api".into(),
                message: "the API has no token: every local process (any user, any container sharing the network namespace) can run agents, reload plugins and rewrite the registry".into(),
                fix: "add [[server.tokens]] entries with the scopes each caller needs (or server.tokens_file), and give the CLI EVOLVE_TOKEN".into(),
            });
        }
        if security.cluster_enabled && !security.cluster_authenticated {
            findings.push(Finding {
                severity: Severity::Critical,
                rule: "cluster.unauthenticated",
                subject: "cluster".into(),
                message: "cluster mode without a cluster key: anyone who can write to Redis can register endpoints that receive live traffic and deregister real nodes".into(),
                fix: "set cluster.key_file to a 0600 file of at least 32 random bytes, the same on every node; remove cluster.allow_unauthenticated".into(),
            });
        }
    }
}

/// A plugin's directory grants outside the operator's roots (`runtime.allowed_dir_roots`):
/// the host refuses them at load, so one here means the roots changed under a running plugin
/// or the host let one through.
fn audit_grants(plugin: &PluginSummary, security: &SecurityPosture, findings: &mut Vec<Finding>) {
    for dir in &plugin.permissions.dirs {
        let inside = security
            .allowed_dir_roots
            .iter()
            .any(|root| is_within(&dir.host_path, root));
        if !inside {
            findings.push(Finding {
                severity: Severity::High,
                rule: "plugin.grant-outside-roots",
                subject: plugin.name.clone(),
                message: format!(
                    "is granted {} (mapped at {}), outside every allowed root ({})",
                    dir.host_path,
                    dir.guest_path,
                    if security.allowed_dir_roots.is_empty() {
                        "none configured".to_string()
                    } else {
                        security.allowed_dir_roots.join(", ")
                    }
                ),
                fix: "remove the grant from its plugin.toml, or add a root that holds it to runtime.allowed_dir_roots".into(),
            });
        }
    }
    for var in plugin
        .permissions
        .env
        .iter()
        .filter(|var| !security.allowed_env.contains(var))
    {
        findings.push(Finding {
            severity: Severity::High,
            rule: "plugin.env-outside-allow-list",
            subject: plugin.name.clone(),
            message: format!("is granted the environment variable {var}, which runtime.allowed_env does not list"),
            fix: format!("remove {var} from its plugin.toml, or add it to runtime.allowed_env"),
        });
    }
}

/// Whether `path` is `root` or below it, by whole components.
fn is_within(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

fn audit_plugin(plugin: &PluginSummary, ceilings: &Ceilings, findings: &mut Vec<Finding>) {
    let name = &plugin.name;
    for host in plugin
        .permissions
        .http_hosts
        .iter()
        .filter(|h| h.contains('*'))
    {
        findings.push(Finding {
            severity: Severity::High,
            rule: "plugin.wildcard-host",
            subject: name.clone(),
            message: format!("may reach any host matching `{host}` over HTTP"),
            fix: "list the exact hosts (host or host:port) the plugin needs in permissions.http_hosts".into(),
        });
    }
    for dir in plugin.permissions.dirs.iter().filter(|d| d.writable) {
        findings.push(Finding {
            severity: Severity::Medium,
            rule: "plugin.writable-dir",
            subject: name.clone(),
            message: format!("may write {} (mapped at {})", dir.host_path, dir.guest_path),
            fix: "grant the directory read-only unless the plugin's job is to write there".into(),
        });
    }
    let l = &plugin.limits;
    let checks: [(&str, u64, u64, &str); 6] = [
        (
            "memory",
            l.memory_bytes >> 20,
            ceilings.max_memory_mb,
            "MiB",
        ),
        ("deadline", l.deadline_ms, ceilings.max_deadline_ms, "ms"),
        (
            "concurrency",
            u64::from(l.max_concurrency),
            u64::from(ceilings.max_concurrency),
            "calls",
        ),
        (
            "queue",
            u64::from(l.max_queue),
            u64::from(ceilings.max_queue),
            "calls",
        ),
        (
            "output",
            l.max_output_bytes >> 10,
            ceilings.max_output_kb,
            "KiB",
        ),
        ("logs", l.max_log_bytes >> 10, ceilings.max_log_kb, "KiB"),
    ];
    for (what, value, ceiling, unit) in checks {
        if value > ceiling {
            findings.push(Finding {
                severity: Severity::Low,
                rule: "plugin.limit-above-ceiling",
                subject: name.clone(),
                message: format!("{what} limit {value} {unit} is above the recommended {ceiling} {unit}"),
                fix: format!("lower [limits] {what} in its plugin.toml, or raise the auditor's ceiling if intended"),
            });
        }
    }
}

impl Report {
    pub(crate) fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> = [
            Severity::Critical,
            Severity::High,
            Severity::Medium,
            Severity::Low,
        ]
        .iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        for f in &self.findings {
            *counts.entry(f.severity.as_str()).or_default() += 1;
        }
        counts
    }

    pub(crate) fn summary(&self) -> String {
        let c = self.counts();
        format!(
            "{} findings: {} critical, {} high, {} medium, {} low",
            self.findings.len(),
            c["critical"],
            c["high"],
            c["medium"],
            c["low"]
        )
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut md = String::from("# Security audit\n\n");
        let _ = writeln!(md, "{}\n", self.summary());
        if !self.findings.is_empty() {
            md.push_str("| Severity | Rule | Subject | Finding | Fix |\n|---|---|---|---|---|\n");
        }
        for f in &self.findings {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                f.severity.as_str(),
                f.rule,
                f.subject.replace('|', "\\|"),
                f.message.replace('|', "\\|"),
                f.fix.replace('|', "\\|")
            );
        }
        json!({
            "counts": self.counts(),
            "findings": self.findings,
            "markdown": md,
        })
    }
}

/// The host of an `http://` URL.
fn plain_http_host(endpoint: &str) -> Option<String> {
    let rest = endpoint.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    Some(listen_host(authority))
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
fn listen_host(listen: &str) -> String {
    if let Some(rest) = listen.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_owned();
    }
    match listen.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_owned(),
        _ => listen.to_owned(),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost") || host == "::1" || host.starts_with("127.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use evolve_plugin_sdk::Service;
    use evolve_plugin_sdk::inventory::{GrantedDir, PluginKind, PluginLimits, PluginPermissions};

    fn plugin(name: &str, hosts: &[&str], writable: bool) -> PluginSummary {
        PluginSummary {
            name: name.into(),
            version: "0.1.0".into(),
            kind: PluginKind::HealthChecker,
            wit_version: "0.1.0".into(),
            description: String::new(),
            state: "ready".into(),
            sha256: String::new(),
            generation: 1,
            permissions: PluginPermissions {
                http_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
                env: Vec::new(),
                dirs: vec![GrantedDir {
                    guest_path: "/d".into(),
                    host_path: "data/d".into(),
                    writable,
                }],
            },
            limits: PluginLimits {
                memory_bytes: 64 << 20,
                deadline_ms: 5_000,
                max_concurrency: 4,
                max_queue: 16,
                max_output_bytes: 1 << 20,
                max_log_bytes: 256 << 10,
            },
            calls: 0,
            failures: 0,
        }
    }

    fn system(listen: &str, auth: bool) -> System {
        System {
            host: HostSummary {
                version: "0.1.0".into(),
                api_listen: listen.into(),
                api_auth: auth,
                uptime_s: 1,
            },
            security: SecurityPosture {
                token_names: if auth { vec!["ops".into()] } else { Vec::new() },
                auth_reads: false,
                cluster_enabled: false,
                cluster_authenticated: false,
                allowed_dir_roots: vec!["data".into()],
                allowed_env: Vec::new(),
            },
            plugins: vec![plugin("clean", &["api.example.com"], false)],
            sources: vec![PluginSource {
                name: "clean".into(),
                dir: "data/plugins/clean".into(),
                sha256_pinned: true,
            }],
            services: Vec::new(),
        }
    }

    fn rules(report: &Report) -> Vec<(&'static str, &'static str, String)> {
        report
            .findings
            .iter()
            .map(|f| (f.severity.as_str(), f.rule, f.subject.clone()))
            .collect()
    }

    #[test]
    fn a_clean_loopback_system_has_no_findings() {
        let report = system("127.0.0.1:7070", true).audit(&Ceilings::default());
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert_eq!(
            report.summary(),
            "0 findings: 0 critical, 0 high, 0 medium, 0 low"
        );
    }

    #[test]
    fn planted_problems_are_each_reported_once_most_severe_first() {
        let mut sys = system("0.0.0.0:7070", false);
        sys.plugins.push(plugin("sneaky", &["*.example.com"], true));
        sys.sources.push(PluginSource {
            name: "sneaky".into(),
            dir: "data/plugins/sneaky".into(),
            sha256_pinned: false,
        });
        sys.plugins[0].limits.memory_bytes = 1 << 30;
        for endpoint in [
            "http://10.0.0.5:9000",
            "http://127.0.0.1:9001",
            "https://10.0.0.6",
        ] {
            sys.services.push(ServiceStatus {
                service: Service {
                    name: "feed".into(),
                    service_type: String::new(),
                    endpoint: endpoint.into(),
                    capabilities: Vec::new(),
                    weight: 100,
                    metadata: Vec::new(),
                },
                health: None,
                circuit: "closed".into(),
            });
        }
        let report = sys.audit(&Ceilings::default());
        assert_eq!(
            rules(&report),
            vec![
                ("critical", "api.public-without-auth", "api".to_owned()),
                ("high", "plugin.wildcard-host", "sneaky".to_owned()),
                ("high", "service.plain-http", "feed".to_owned()),
                ("medium", "plugin.unpinned", "sneaky".to_owned()),
                ("medium", "plugin.writable-dir", "sneaky".to_owned()),
                ("low", "plugin.limit-above-ceiling", "clean".to_owned()),
            ]
        );
        assert!(report.findings[5].message.contains("memory limit 1024 MiB"));
    }

    #[test]
    fn a_daemon_without_a_token_a_cluster_without_a_key_and_grants_outside_the_roots_are_flagged() {
        let mut sys = system("127.0.0.1:7070", false);
        sys.security.cluster_enabled = true;
        let mut outside = plugin("reacher", &[], false);
        outside.permissions.dirs[0].host_path = "/etc".into();
        outside.permissions.env = vec!["AWS_SECRET_ACCESS_KEY".into()];
        sys.plugins.push(outside);
        // A root is matched by whole components: `data2` is not inside `data`.
        let mut sibling = plugin("sibling", &[], false);
        sibling.permissions.dirs[0].host_path = "data2/x".into();
        sys.plugins.push(sibling);
        let report = sys.audit(&Ceilings::default());
        assert_eq!(
            rules(&report),
            vec![
                ("critical", "cluster.unauthenticated", "cluster".to_owned()),
                ("high", "plugin.env-outside-allow-list", "reacher".to_owned()),
                ("high", "plugin.grant-outside-roots", "reacher".to_owned()),
                ("high", "plugin.grant-outside-roots", "sibling".to_owned()),
                ("medium", "api.no-token", "api".to_owned()),
            ]
        );
        assert!(report.findings[2].message.contains("/etc"), "{:?}", report.findings[2]);
        sys.security.cluster_authenticated = true;
        sys.security.token_names = vec!["ops".into()];
        sys.plugins.truncate(1);
        assert!(sys.audit(&Ceilings::default()).findings.is_empty());
    }

    #[test]
    fn hosts_are_read_from_listen_addresses_and_urls() {
        assert_eq!(listen_host("[::1]:7070"), "::1");
        assert!(is_loopback(&listen_host("[::1]:7070")));
        assert_eq!(
            plain_http_host("http://user@10.1.2.3:80/x"),
            Some("10.1.2.3".into())
        );
        assert_eq!(plain_http_host("https://10.1.2.3"), None);
        assert!(!is_loopback("0.0.0.0"));
        let report = system("0.0.0.0:7070", true).audit(&Ceilings::default());
        assert_eq!(
            rules(&report),
            vec![("low", "api.public", "api".to_owned())]
        );
    }
}

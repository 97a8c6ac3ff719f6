//! The call path: admission, a fresh store and instance with the plugin's grants, the export
//! call under the deadline, classification of failures, and the check of the answer.
//!
//! Guest text that ends up in a host error (a trap's stderr, a refused plugin's message) is
//! escaped where the error is made ([`escape_untrusted`]), so the error's message is safe in the
//! daemon's log, its events and the CLI's terminal wherever it travels.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use evolve_core::untrusted::{escape_untrusted, escape_untrusted_owned};
use serde::Serialize;
use tokio::sync::Semaphore;
use wasmtime::component::ResourceTableError;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::ResourceTable;
use wasmtime_wasi_http::WasiHttpCtx;

use super::{Description, Plugin, WorldPre};
use crate::bindings::types::{
    AgentInfo, CheckerInfo, HealthReport, PluginError, Service, Task, TaskOutcome,
};
use crate::error::CallError;
use crate::limits::StoreLimiter;
use crate::output::{ELEMENT_COST_BYTES, MAX_ARTIFACTS, MAX_CAPABILITIES, MAX_DESCRIBE_BYTES};
use crate::sandbox::{CallLog, HttpPolicy, uri_host_port};
use crate::state::{PluginState, ProbeQuota};
use crate::supervision::SupervisionConfig;

/// Resources (open files, streams, HTTP requests...) a call may hold at once. Each can pin host
/// memory or a file descriptor; wasmtime's default (1,000,000) would let one call exhaust the
/// daemon's descriptors. Real plugins hold a handful.
const MAX_RESOURCES: usize = 1_024;

/// Bytes of HTTP header fields a checker may build per `fields` resource. wasi-http's default
/// (128 KiB) times many resources is a lot of host memory; 16 KiB is above any real request.
const MAX_HTTP_FIELDS_BYTES: usize = 16 << 10;

/// Extra wall-clock time, past the deadline, before a call blocked in a host await (an HTTP
/// request) is abandoned. Guest code is interrupted by the epoch within one tick of the deadline;
/// this only covers time spent outside guest code.
const HOST_AWAIT_GRACE: Duration = Duration::from_millis(50);

/// Characters of a name `describe()` claimed that are kept for the mismatch warning. Manifest
/// names have at most 64; twice that shows any real claim whole, and a claim of megabytes (up to
/// `max_output_kb`) does not get copied into a log line, an event and the API.
const MAX_CLAIMED_NAME_CHARS: usize = 128;

/// A call into a plugin.
#[derive(Debug)]
pub enum Call {
    Describe,
    Run(Task),
    Health,
    Check(Service),
}

/// Its answer, when the call itself worked. A plugin's own `Err` is an answer, not a failure of
/// the call.
#[derive(Debug, Clone, Serialize)]
pub enum Answer {
    /// `describe()`'s answer, renamed to the manifest's name; `claimed_name` is the name the
    /// component gave when it differed (escaped and capped), kept only to warn about.
    Described {
        description: Description,
        claimed_name: Option<String>,
    },
    Ran(Result<TaskOutcome, PluginError>),
    Health(HealthReport),
    Checked(Result<HealthReport, PluginError>),
}

/// An answer with what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct CallReport<T> {
    pub plugin: String,
    pub generation: u64,
    pub duration_us: u64,
    /// Log bytes over `max_log_kb` that were dropped.
    pub logs_dropped: u64,
    pub value: T,
}

impl Plugin {
    /// Serves one call: quarantine check, admission, a fresh instance, the export, bounded by
    /// limits; the outcome feeds supervision.
    pub async fn invoke(
        &self,
        pool: &Capacity,
        call: Call,
        supervision: &SupervisionConfig,
    ) -> Result<CallReport<Answer>, CallError> {
        if let Err((remaining, reason)) = self.supervision.admit() {
            let error = CallError::Quarantined {
                plugin: self.name().to_string(),
                retry_after_ms: remaining.as_millis() as u64,
                reason,
            };
            self.stats.record(Duration::ZERO, Err(&error));
            return Err(error);
        }
        let result = self.probe(pool, call).await;
        self.supervision
            .record(result.as_ref().map(|_| ()), supervision);
        result
    }

    /// Serves one call without the quarantine check or supervision accounting: the canary path.
    pub async fn probe(
        &self,
        pool: &Capacity,
        call: Call,
    ) -> Result<CallReport<Answer>, CallError> {
        let started = Instant::now();
        let _active = ActiveCall::enter(self);
        let result = self.invoke_inner(pool, call).await;
        let elapsed = started.elapsed();
        self.stats
            .record(elapsed, result.as_ref().map(|_| ()).map_err(|(e, _)| e));
        let (answer, logs_dropped) = match result {
            Ok(ok) => ok,
            Err((error, _)) => {
                // Guest text in errors is escaped where they are made; escaping the rendering
                // again (idempotent) keeps that true for every variant, present and future.
                let message = error.to_string();
                let message = escape_untrusted(&message);
                tracing::warn!(plugin = self.name(), code = error.code(), "{message}");
                return Err(error);
            }
        };
        Ok(CallReport {
            plugin: self.manifest.name.clone(),
            generation: self.generation,
            duration_us: elapsed.as_micros() as u64,
            logs_dropped,
            value: answer,
        })
    }

    async fn invoke_inner(
        &self,
        pool: &Capacity,
        call: Call,
    ) -> Result<(Answer, u64), (CallError, u64)> {
        let name = self.name();
        // 1. Admission: the plugin's own concurrency and queue, then a pool slot. Per-plugin
        //    queues bound how many wait for the pool, and the pool never sees more concurrent
        //    instances than it has slots, so it cannot fail with a raw exhaustion error.
        let _permit = self.gate.enter(name).await.map_err(|e| (e, 0))?;
        // The waits for a pool slot and for memory are bounded together by the call's
        // deadline: when slow plugins hold them, a caller gets Overloaded (or MemoryBudget)
        // instead of hanging behind them.
        let admit_by = tokio::time::Instant::now() + self.limits.deadline();
        let slot = tokio::time::timeout_at(admit_by, Arc::clone(&pool.pool).acquire_owned());
        let _slot = match slot.await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_closed)) => {
                let message = "the runtime is shutting down".to_string();
                let plugin = name.to_string();
                return Err((CallError::Instantiate { plugin, message }, 0));
            }
            Err(_elapsed) => {
                let (running, queued) = (self.gate.in_flight(), self.gate.queued());
                let plugin = name.to_string();
                return Err((
                    CallError::Overloaded {
                        plugin,
                        running,
                        queued,
                    },
                    0,
                ));
            }
        };

        // Then its whole memory_mb of the host memory budget, within what is left of the wait.
        let wanted_mb = self.limits.memory_mb();
        let left = admit_by.saturating_duration_since(tokio::time::Instant::now());
        let Some(_memory) = pool.memory.reserve(wanted_mb, left).await else {
            return Err((
                CallError::MemoryBudget {
                    plugin: name.to_string(),
                    wanted_mb,
                    budget_mb: pool.memory.total_mb(),
                    reserved_mb: pool.memory.reserved_mb(),
                },
                0,
            ));
        };

        // 2. A fresh store with exactly the plugin's grants.
        let deadline = self.limits.deadline();
        let target = match &call {
            Call::Check(service) => service
                .endpoint
                .parse::<http::Uri>()
                .ok()
                .and_then(|uri| uri_host_port(&uri)),
            _ => None,
        };
        let log = CallLog::new(Arc::clone(&self.context.name), self.limits.max_log_bytes);
        let wasi = self.grants.wasi_ctx(&log).map_err(|e| {
            (
                CallError::Instantiate {
                    plugin: name.to_string(),
                    message: format!("granted directory unavailable: {e}"),
                },
                0,
            )
        })?;
        let http_policy = HttpPolicy::new(
            Arc::clone(&self.context.name),
            Arc::clone(&self.http_hosts),
            target,
            deadline,
        )
        .with_transport(
            self.snapshot_source
                .upgrade()
                .and_then(|source| source.http_transport()),
        );
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_HTTP_FIELDS_BYTES);
        let state = PluginState {
            wasi,
            table,
            http,
            http_policy: http_policy.clone(),
            limiter: StoreLimiter::new(self.limits.memory_bytes),
            log: Arc::clone(&log),
            plugin: Arc::clone(&self.context),
            snapshot_source: self.snapshot_source.clone(),
            snapshot: None,
            deadline_hit: false,
            probe_quota: ProbeQuota::new(self.limits.max_probes),
        };
        let mut store = Store::new(self.engine(), state);
        store.limiter(|state| &mut state.limiter);
        let deadline_at = Instant::now() + deadline;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            if Instant::now() >= deadline_at {
                ctx.data_mut().deadline_hit = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Yield at every tick so a busy guest shares the executor thread.
                Ok(UpdateDeadline::Yield(1))
            }
        });

        // 3 + 4. Instantiate and call, bounded by the deadline also while in host awaits.
        let outcome = tokio::time::timeout(
            deadline + HOST_AWAIT_GRACE,
            dispatch(&self.pre, &mut store, call),
        )
        .await;
        let logs_dropped = log.finish();

        // 5. Classify failures by what the store saw, not by the trap alone.
        let answer = match outcome {
            Err(_elapsed) => {
                return Err((
                    CallError::DeadlineExceeded {
                        plugin: name.to_string(),
                        deadline_ms: self.limits.deadline_ms,
                    },
                    logs_dropped,
                ));
            }
            Ok(Err(error)) => return Err((self.classify(error, &store, &log), logs_dropped)),
            Ok(Ok(answer)) => answer,
        };
        // A call that went past its probe quota fails, whatever it made of the refusals.
        let quota = store.data().probe_quota;
        if quota.refused > 0 {
            return Err((
                CallError::ProbeQuota {
                    plugin: name.to_string(),
                    limit: quota.limit,
                    refused: quota.refused,
                },
                logs_dropped,
            ));
        }

        // 6. The answer must fit the output budget and carry valid JSON.
        self.check_answer(&answer, &http_policy)
            .map_err(|e| (e, logs_dropped))?;

        // 7. A description names the plugin by its manifest: a component cannot take another
        //    plugin's name in the API, events, logs or metrics.
        Ok((self.own_name(answer), logs_dropped))
    }

    /// Renames a description to the manifest's name, keeping the claimed one (escaped, capped)
    /// when it differed.
    fn own_name(&self, answer: Answer) -> Answer {
        let Answer::Described {
            mut description,
            claimed_name: _,
        } = answer
        else {
            return answer;
        };
        let name = match &mut description {
            Description::Agent(info) => &mut info.name,
            Description::Checker(info) => &mut info.name,
        };
        let claimed_name = (name != self.name()).then(|| {
            let claimed = std::mem::replace(name, self.name().to_string());
            let mut shown: String = claimed.chars().take(MAX_CLAIMED_NAME_CHARS).collect();
            if shown.len() < claimed.len() {
                shown.push('…');
            }
            escape_untrusted_owned(shown)
        });
        Answer::Described {
            description,
            claimed_name,
        }
    }

    fn engine(&self) -> &Engine {
        match &self.pre {
            WorldPre::MetaAgent(pre) => pre.engine(),
            WorldPre::HealthChecker(pre) => pre.engine(),
        }
    }

    fn classify(
        &self,
        error: wasmtime::Error,
        store: &Store<PluginState>,
        log: &CallLog,
    ) -> CallError {
        let plugin = self.name().to_string();
        if let Some(hit) = store.data().limiter.memory_hit {
            return CallError::MemoryLimit {
                plugin,
                limit_bytes: hit.limit,
                requested_bytes: hit.requested,
            };
        }
        if store.data().deadline_hit
            || matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt))
        {
            return CallError::DeadlineExceeded {
                plugin,
                deadline_ms: self.limits.deadline_ms,
            };
        }
        if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return CallError::Exited {
                plugin,
                status: exit.0,
            };
        }
        let table_full = error.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<ResourceTableError>(),
                Some(ResourceTableError::Full)
            )
        });
        if table_full {
            return CallError::TooManyResources {
                plugin,
                limit: MAX_RESOURCES,
            };
        }
        if let Some(trap) = error.downcast_ref::<Trap>() {
            let stderr = log.stderr_tail();
            let trap = format!("{trap}{}", trap_hint(trap));
            let message = if stderr.is_empty() {
                trap
            } else {
                // The guest wrote these bytes: a panic message can hold any text.
                format!("{trap}; stderr: {}", escape_untrusted(&stderr))
            };
            return CallError::Trap { plugin, message };
        }
        CallError::Trap {
            plugin,
            // May quote a guest-made value (a resource's contents, a name it passed).
            message: escape_untrusted_owned(format!("{error:#}")),
        }
    }

    fn check_answer(&self, answer: &Answer, http: &HttpPolicy) -> Result<(), CallError> {
        let plugin = || self.name().to_string();
        if let Some(refusal) = overlong_list(self.name(), answer) {
            return Err(refusal);
        }
        let size = answer_size(answer);
        let (limit, limit_name) = match answer {
            Answer::Described { .. } => (
                self.limits.max_output_bytes.min(MAX_DESCRIBE_BYTES),
                "the host's cap on a describe() answer (or its max_output_kb limit, if lower)",
            ),
            _ => (self.limits.max_output_bytes, "its max_output_kb limit"),
        };
        if size > limit {
            return Err(CallError::OutputTooLarge {
                plugin: plugin(),
                size,
                limit,
                limit_name,
            });
        }
        match answer {
            Answer::Ran(Ok(outcome)) => {
                // The reader the daemon's history and API parse it back with: what passes here
                // is served as this document.
                crate::output::check(&outcome.output).map_err(|e| CallError::InvalidOutput {
                    plugin: plugin(),
                    field: "task-outcome.output",
                    message: e.to_string(),
                })?;
            }
            Answer::Ran(Err(error)) | Answer::Checked(Err(error)) => {
                // A plugin that failed after the host refused it a host reports the refusal.
                let (hosts, count) = http.refused();
                if !hosts.is_empty() {
                    let more = count.saturating_sub(hosts.len() as u64);
                    return Err(CallError::PermissionDenied {
                        plugin: plugin(),
                        refused: format!(
                            "outbound HTTP to {}{}",
                            hosts.join(", "),
                            if more > 0 {
                                format!(" (and {more} more refusals)")
                            } else {
                                String::new()
                            }
                        ),
                        message: escape_untrusted_owned(error.message.clone()),
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// What every call draws on besides its plugin's own gate: a slot of the shared instance pool,
/// then its plugin's `memory_mb` of the host memory budget.
#[derive(Debug, Clone)]
pub struct Capacity {
    pub pool: Arc<Semaphore>,
    pub memory: Arc<crate::limits::MemoryBudget>,
}

/// Counts a call on its generation from admission to return, even if the caller's future is
/// dropped midway, so draining knows when the generation is idle.
struct ActiveCall<'a>(&'a Plugin);

impl<'a> ActiveCall<'a> {
    fn enter(plugin: &'a Plugin) -> ActiveCall<'a> {
        plugin.active.fetch_add(1, Ordering::AcqRel);
        ActiveCall(plugin)
    }
}

impl Drop for ActiveCall<'_> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What a trap's own text does not tell a plugin author: which stack ran out.
fn trap_hint(trap: &Trap) -> &'static str {
    match trap {
        // LLVM-built guests (Rust, C, Zig) keep their shadow stack at the bottom of linear
        // memory, so running out of it shows as an access below address 0.
        Trap::MemoryOutOfBounds => {
            " (after deep recursion this is the guest's shadow stack overflowing: LLVM-built guests keep it at the bottom of linear memory, 1 MiB for Rust on wasm32 unless linked with `-C link-arg=-zstack-size=BYTES`; otherwise a wild pointer)"
        }
        Trap::StackOverflow => {
            " (the guest's call depth exceeded the host's wasm stack, wasmtime's max_wasm_stack of 512 KiB: recurse less deeply)"
        }
        _ => "",
    }
}

/// The refusal of a list in `answer` longer than the host accepts, if there is one.
fn overlong_list(plugin: &str, answer: &Answer) -> Option<CallError> {
    let (field, count, limit, constant) = match answer {
        Answer::Described {
            description: Description::Agent(AgentInfo { capabilities, .. }),
            ..
        } => (
            "agent-info.capabilities",
            capabilities.len(),
            MAX_CAPABILITIES,
            "MAX_CAPABILITIES",
        ),
        Answer::Described {
            description: Description::Checker(CheckerInfo { capabilities, .. }),
            ..
        } => (
            "checker-info.capabilities",
            capabilities.len(),
            MAX_CAPABILITIES,
            "MAX_CAPABILITIES",
        ),
        Answer::Ran(Ok(outcome)) => (
            "task-outcome.artifacts",
            outcome.artifacts.len(),
            MAX_ARTIFACTS,
            "MAX_ARTIFACTS",
        ),
        _ => return None,
    };
    (count > limit).then(|| CallError::TooManyEntries {
        plugin: plugin.to_string(),
        field,
        count,
        limit,
        constant,
    })
}

/// What an answer weighs against its output limit: the guest-produced text, plus
/// [`ELEMENT_COST_BYTES`] for every string field and list entry, so no shape of answer is free.
fn answer_size(answer: &Answer) -> u64 {
    let text = |s: &str| s.len() as u64 + ELEMENT_COST_BYTES;
    let texts = |list: &[String]| list.iter().map(|s| text(s)).sum::<u64>();
    let error_size = |e: &PluginError| text(&e.message);
    let report_size = |r: &HealthReport| text(&r.detail);
    let info = |name: &str, version: &str, desc: &str, caps: &[String]| {
        text(name) + text(version) + text(desc) + texts(caps)
    };
    match answer {
        Answer::Described {
            description: Description::Agent(a),
            ..
        } => {
            info(&a.name, &a.version, &a.description, &a.capabilities)
                + a.schedule.as_deref().map_or(0, text)
        }
        Answer::Described {
            description: Description::Checker(c),
            ..
        } => info(&c.name, &c.version, &c.description, &c.capabilities),
        Answer::Ran(Ok(o)) => text(&o.summary) + text(&o.output) + texts(&o.artifacts),
        Answer::Ran(Err(e)) | Answer::Checked(Err(e)) => error_size(e),
        Answer::Health(r) | Answer::Checked(Ok(r)) => report_size(r),
    }
}

/// Instantiates the world and calls the export `call` names.
async fn dispatch(
    pre: &WorldPre,
    store: &mut Store<PluginState>,
    call: Call,
) -> wasmtime::Result<Answer> {
    match pre {
        WorldPre::MetaAgent(pre) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            let agent = instance.evolve_plugin_agent();
            Ok(match call {
                Call::Describe => Answer::Described {
                    description: Description::Agent(agent.call_describe(&mut *store).await?),
                    claimed_name: None,
                },
                Call::Run(task) => Answer::Ran(agent.call_run(&mut *store, &task).await?),
                Call::Health => Answer::Health(agent.call_health(&mut *store).await?),
                Call::Check(_) => {
                    return Err(wasmtime::Error::msg("meta agents do not check services"));
                }
            })
        }
        WorldPre::HealthChecker(pre) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            let checker = instance.evolve_plugin_checker();
            Ok(match call {
                Call::Describe => Answer::Described {
                    description: Description::Checker(checker.call_describe(&mut *store).await?),
                    claimed_name: None,
                },
                Call::Check(service) => {
                    Answer::Checked(checker.call_check(&mut *store, &service).await?)
                }
                Call::Run(_) | Call::Health => {
                    return Err(wasmtime::Error::msg("health checkers do not run tasks"));
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(capabilities: Vec<String>, description: String) -> Answer {
        Answer::Described {
            description: Description::Agent(AgentInfo {
                name: "a".into(),
                version: "1".into(),
                description,
                capabilities,
                schedule: None,
            }),
            claimed_name: None,
        }
    }

    fn ran(artifacts: Vec<String>) -> Answer {
        Answer::Ran(Ok(TaskOutcome {
            summary: String::new(),
            output: "null".into(),
            artifacts,
        }))
    }

    #[test]
    fn every_field_and_list_entry_is_charged_besides_its_text() {
        // summary, output ("null", 4 bytes) and two empty artifacts: four elements.
        assert_eq!(
            answer_size(&ran(vec![String::new(); 2])),
            4 + 4 * ELEMENT_COST_BYTES
        );
        let empty = answer_size(&ran(Vec::new()));
        assert_eq!(
            answer_size(&ran(vec![String::new(); 1_000])) - empty,
            1_000 * ELEMENT_COST_BYTES
        );
    }

    #[test]
    fn lists_past_their_cap_are_named_with_the_constant() {
        assert!(overlong_list("p", &ran(vec![String::new(); MAX_ARTIFACTS])).is_none());
        assert!(matches!(
            overlong_list("p", &ran(vec![String::new(); MAX_ARTIFACTS + 1])),
            Some(CallError::TooManyEntries {
                field: "task-outcome.artifacts",
                count,
                limit: MAX_ARTIFACTS,
                constant: "MAX_ARTIFACTS",
                ..
            }) if count == MAX_ARTIFACTS + 1
        ));
        let claims = described(vec![String::new(); MAX_CAPABILITIES + 1], String::new());
        assert!(matches!(
            overlong_list("p", &claims),
            Some(CallError::TooManyEntries {
                field: "agent-info.capabilities",
                ..
            })
        ));
    }

    #[test]
    fn a_describe_answer_within_the_entry_caps_can_still_outweigh_its_own_cap() {
        // 64 capabilities of 1 KiB each: within MAX_CAPABILITIES, past MAX_DESCRIBE_BYTES.
        let answer = described(vec!["c".repeat(1024); MAX_CAPABILITIES], String::new());
        assert!(overlong_list("p", &answer).is_none());
        assert!(answer_size(&answer) > MAX_DESCRIBE_BYTES);
    }
}

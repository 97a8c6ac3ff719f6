//! The seam between the agent manager and the plugin runtime: everything the manager reads of
//! the loaded agents, and every call it makes into one, goes through an [`AgentRunner`].
//!
//! The daemon's is [`RuntimeAgents`], over the [`Runtime`]; the manager's tests script their
//! own (answers per attempt, delays under paused time, a call that never returns), so the run
//! lifecycle is tested in-process without compiling a component.

use std::sync::Arc;

use super::AgentError;
use evolve_runtime::bindings::types::{HealthReport, PluginError, Task, TaskOutcome};
use evolve_runtime::manifest::AgentSpec;
use evolve_runtime::{CallError, CallReport, Description, Plugin, PluginKind, Runtime};

/// One loaded meta agent as the manager sees it. A snapshot: the manager asks again for every
/// run and every view, so a hot reload in between is picked up.
#[derive(Debug, Clone)]
pub struct LoadedAgent {
    pub name: String,
    pub version: String,
    pub description: String,
    /// The generation serving the name when the snapshot was taken.
    pub generation: u64,
    /// The manifest's `[agent]` table: run policy and schedule.
    pub spec: Option<AgentSpec>,
    /// What `describe()` listed at the load canary.
    pub capabilities: Vec<String>,
}

/// A run call's answer: the call failed (`Err`), or the agent answered, possibly with its own
/// error.
pub type RunAnswer = Result<CallReport<Result<TaskOutcome, PluginError>>, CallError>;

/// Runs meta agents for the manager; the daemon's runs plugins through the runtime, tests use
/// their own.
#[async_trait::async_trait]
pub trait AgentRunner: Send + Sync + 'static {
    /// Every loaded meta agent.
    fn agents(&self) -> Vec<LoadedAgent>;

    /// The meta agent named `name`; [`AgentError::NotFound`] when nothing by that name is
    /// loaded ([`AgentError::Loading`] while its first load is under way),
    /// [`AgentError::NotAnAgent`] when it is a plugin of another kind.
    fn agent(&self, name: &str) -> Result<LoadedAgent, AgentError>;

    /// The generation serving `name`, whatever its kind.
    fn generation(&self, name: &str) -> Option<u64>;

    /// Runs one task. Dropping the future stops the guest: that is how a run's deadline and a
    /// cancel end an attempt in flight.
    async fn run(&self, name: &str, task: Task) -> RunAnswer;

    /// Calls the agent's `health()`; [`CallError::NotFound`] or [`CallError::WrongKind`] when
    /// `name` is not a loaded meta agent.
    async fn health(&self, name: &str) -> Result<CallReport<HealthReport>, CallError>;
}

/// The daemon's [`AgentRunner`]: the runtime's loaded plugins.
#[derive(Debug, Clone)]
pub struct RuntimeAgents {
    runtime: Runtime,
}

impl RuntimeAgents {
    pub fn new(runtime: Runtime) -> RuntimeAgents {
        RuntimeAgents { runtime }
    }
}

fn loaded_agent(plugin: &Plugin) -> LoadedAgent {
    let capabilities = match plugin.description() {
        Some(Description::Agent(info)) => info.capabilities.clone(),
        _ => Vec::new(),
    };
    LoadedAgent {
        name: plugin.name().to_string(),
        version: plugin.manifest.version.clone(),
        description: plugin.manifest.description.clone(),
        generation: plugin.generation,
        spec: plugin.manifest.agent.clone(),
        capabilities,
    }
}

#[async_trait::async_trait]
impl AgentRunner for RuntimeAgents {
    fn agents(&self) -> Vec<LoadedAgent> {
        self.runtime
            .plugins()
            .iter()
            .filter(|p| p.kind() == PluginKind::MetaAgent)
            .map(|p| loaded_agent(p))
            .collect()
    }

    fn agent(&self, name: &str) -> Result<LoadedAgent, AgentError> {
        match self.runtime.get(name) {
            Some(plugin) if plugin.kind() == PluginKind::MetaAgent => Ok(loaded_agent(&plugin)),
            Some(plugin) => Err(AgentError::NotAnAgent {
                agent: name.to_string(),
                kind: plugin.kind().world(),
            }),
            None => Err(match self.runtime.loading_since(name) {
                Some(since) => AgentError::Loading {
                    agent: name.to_string(),
                    since,
                },
                None => AgentError::NotFound {
                    agent: name.to_string(),
                },
            }),
        }
    }

    fn generation(&self, name: &str) -> Option<u64> {
        self.runtime.get(name).map(|p: Arc<Plugin>| p.generation)
    }

    async fn run(&self, name: &str, task: Task) -> RunAnswer {
        self.runtime.run_agent(name, task).await
    }

    async fn health(&self, name: &str) -> Result<CallReport<HealthReport>, CallError> {
        self.runtime.agent_health(name).await
    }
}

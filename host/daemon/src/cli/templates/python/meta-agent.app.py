"""`{{name}}`: a meta agent in Python. Task `hello` (the default) answers
`{"greeting": "<greeting>, <who>"}` with `greeting` from `[config]` and `who` from the task input
(default `world`).

Build: `evolve plugin build` (componentize-py against the `meta-agent` world) →
`target/plugin/{{name}}/`; drop that dir into the daemon's plugins dir.

Bindings: `wit_world` is generated at build time. Exports are a class named after the
interface (`Agent`); the shared types are `wit_world.imports.types` (in a checker, whose world
also imports `wasi:http/types`, they are `wit_world.imports.evolve_plugin_types`); records are dataclasses with snake_case fields; raising
`componentize_py_types.Err(PluginError(...))` returns the `err` case of a `result`.
"""

import json
import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, logging
from wit_world.imports.types import (
    AgentInfo,
    ErrorCode,
    HealthReport,
    HealthStatus,
    PluginError,
    Task,
    TaskOutcome,
)


def invalid_input(message: str) -> Err:
    return Err(PluginError(code=ErrorCode.INVALID_INPUT, message=message, retryable=False))


class Agent(exports.Agent):
    def describe(self) -> AgentInfo:
        return AgentInfo(
            name="{{name}}",
            version="0.1.0",
            description="Answers task `hello` with a greeting",
            capabilities=["example"],
            schedule=None,
        )

    def run(self, task: Task) -> TaskOutcome:
        if task.name not in ("", "hello"):
            raise invalid_input(f"unknown task `{task.name}`; this agent runs `hello`")
        greeting = json.loads(config.get("greeting") or '"hello"')
        try:
            data = json.loads(task.input)
        except ValueError as err:
            raise invalid_input(f"input is not JSON: {err}")
        if not isinstance(data, dict) or set(data) - {"who"}:
            raise invalid_input('input must be {} or {"who": "<name>"}')
        text = f"{greeting}, {data.get('who', 'world')}"
        logging.log(logging.Level.INFO, f"greeted: {text}", [])
        return TaskOutcome(summary=text, output=json.dumps({"greeting": text}), artifacts=[])

    def health(self) -> HealthReport:
        return HealthReport(
            status=HealthStatus.HEALTHY,
            latency_us=0,
            detail="ready",
            checked_at_ms=int(time.time() * 1000),
        )

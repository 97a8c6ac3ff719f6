// `inventory-digest-js`: a meta agent in JavaScript, built with componentize-js against the
// `meta-agent` world (`cargo xtask build-plugins` or `evolve plugin build`). Its Rust twin is
// plugins/testing/inventory-digest; the e2e parity tests run one test body against both.
//
// - task `digest` (input `{}` or `{"unhealthy_only": bool}`): counts from the inventory, as
//   `{"plugins", "plugins_by_kind": {"meta-agent", "health-checker"}, "services",
//   "unhealthy_services": [sorted names], "models", "agents"}`, summary
//   `<p> plugins, <s> services (<u> unhealthy), <m> models, <a> agents`; with `unhealthy_only`
//   the output is just `{"unhealthy_services": [...]}`.
// - any other task, or input that is not such an object: `invalid-input`, not retryable.
// - `health()`: healthy, detail `ready`.
//
// Bindings follow the component model's JS mapping: records are objects with camelCase fields,
// enums are their kebab-case names, `u64` is a BigInt, and an `err` result is thrown.

import { log } from "evolve:plugin/logging@0.1.0";
import * as inventory from "evolve:plugin/inventory@0.1.0";

const NAME = "inventory-digest-js";
const VERSION = "0.1.0";

function invalidInput(message) {
  // componentize-js turns a thrown value into the `err` case of a `result` export.
  return { code: "invalid-input", message, retryable: false };
}

function parseInput(text) {
  let input;
  try {
    input = JSON.parse(text);
  } catch (err) {
    throw invalidInput(`input must be {} or {"unhealthy_only": bool}: ${err.message}`);
  }
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    throw invalidInput(`input must be {} or {"unhealthy_only": bool}: not an object`);
  }
  for (const [key, value] of Object.entries(input)) {
    if (key !== "unhealthy_only") {
      throw invalidInput(`input must be {} or {"unhealthy_only": bool}: unknown field \`${key}\``);
    }
    if (typeof value !== "boolean") {
      throw invalidInput(`input must be {} or {"unhealthy_only": bool}: \`unhealthy_only\` is not a bool`);
    }
  }
  return { unhealthyOnly: input.unhealthy_only === true };
}

function unhealthyServices() {
  const names = inventory
    .services()
    .filter((s) => s.health !== undefined && s.health !== null && s.health.status === "unhealthy")
    .map((s) => s.service.name);
  return [...new Set(names)].sort();
}

export const agent = {
  describe() {
    return {
      name: NAME,
      version: VERSION,
      description: "Counts what the inventory shows",
      capabilities: ["inventory"],
      schedule: undefined,
    };
  },

  run(task) {
    if (task.name !== "digest") {
      throw invalidInput(`unknown task \`${task.name}\`; this agent runs \`digest\``);
    }
    const input = parseInput(task.input);
    const unhealthy = unhealthyServices();
    if (input.unhealthyOnly) {
      return {
        summary: `${unhealthy.length} unhealthy services`,
        output: JSON.stringify({ unhealthy_services: unhealthy }),
        artifacts: [],
      };
    }
    const plugins = inventory.plugins();
    const agents = plugins.filter((p) => p.kind === "meta-agent").length;
    const services = inventory.services().length;
    const models = inventory.models().length;
    const runningAgents = inventory.agents().length;
    const summary =
      `${plugins.length} plugins, ${services} services (${unhealthy.length} unhealthy), ` +
      `${models} models, ${runningAgents} agents`;
    log("info", `digest: ${summary}`, []);
    return {
      summary,
      output: JSON.stringify({
        plugins: plugins.length,
        plugins_by_kind: { "meta-agent": agents, "health-checker": plugins.length - agents },
        services,
        unhealthy_services: unhealthy,
        models,
        agents: runningAgents,
      }),
      artifacts: [],
    };
  },

  health() {
    return { status: "healthy", latencyUs: 0n, detail: "ready", checkedAtMs: BigInt(Date.now()) };
  },
};

// `{{name}}`: a meta agent in JavaScript. Task `hello` (the default) answers
// `{"greeting": "<greeting>, <who>"}` with `greeting` from `[config]` and `who` from the task
// input (default `world`).
//
// Build: `evolve plugin build` (componentize-js against the `meta-agent` world) →
// `target/plugin/{{name}}/`; drop that dir into the daemon's plugins dir.
//
// Bindings: imports are ES modules named by their WIT interface; records are objects with
// camelCase fields, enums their kebab-case names, `u64` a BigInt, `option` undefined or the
// value; throwing a `plugin-error` object returns the `err` case of a `result`.

import { log } from "evolve:plugin/logging@0.1.0";
import { get as configGet } from "evolve:plugin/config@0.1.0";

function invalidInput(message) {
  return { code: "invalid-input", message, retryable: false };
}

export const agent = {
  describe() {
    return {
      name: "{{name}}",
      version: "0.1.0",
      description: "Answers task `hello` with a greeting",
      capabilities: ["example"],
      schedule: undefined,
    };
  },

  run(task) {
    if (task.name !== "" && task.name !== "hello") {
      throw invalidInput(`unknown task \`${task.name}\`; this agent runs \`hello\``);
    }
    const configured = configGet("greeting");
    const greeting = configured === undefined ? "hello" : JSON.parse(configured);
    let input;
    try {
      input = JSON.parse(task.input);
    } catch (err) {
      throw invalidInput(`input is not JSON: ${err.message}`);
    }
    if (input === null || typeof input !== "object" || Array.isArray(input) ||
        Object.keys(input).some((key) => key !== "who")) {
      throw invalidInput('input must be {} or {"who": "<name>"}');
    }
    const text = `${greeting}, ${input.who ?? "world"}`;
    log("info", `greeted: ${text}`, []);
    return { summary: text, output: JSON.stringify({ greeting: text }), artifacts: [] };
  },

  health() {
    return { status: "healthy", latencyUs: 0n, detail: "ready", checkedAtMs: BigInt(Date.now()) };
  },
};

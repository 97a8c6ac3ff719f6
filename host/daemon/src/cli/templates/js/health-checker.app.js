// `{{name}}`: a health checker in JavaScript. GETs the service's endpoint followed by `path`
// from `[config]`: 2xx is healthy, 3xx/4xx degraded, 5xx or no answer unhealthy.
//
// Build: `evolve plugin build` (componentize-js against the `health-checker-http` world: the
// checker world plus `wasi:http/outgoing-handler`) → `target/plugin/{{name}}/`; drop that dir
// into the daemon's plugins dir. The host only lets it reach the checked service's own
// host:port and the hosts in `permissions.http_hosts`.

import { get as configGet } from "evolve:plugin/config@0.1.0";
import { handle } from "wasi:http/outgoing-handler@0.2.12";
import { Fields, OutgoingRequest, RequestOptions } from "wasi:http/types@0.2.12";

function setting(key, fallback) {
  const value = configGet(key);
  return value === undefined ? fallback : JSON.parse(value);
}

function report(status, detail, start) {
  return {
    status,
    latencyUs: BigInt(Math.round((Date.now() - start) * 1000)),
    detail,
    checkedAtMs: BigInt(Date.now()),
  };
}

export const checker = {
  describe() {
    return {
      name: "{{name}}",
      version: "0.1.0",
      description: "GETs a service's health path",
      capabilities: ["http"],
    };
  },

  check(target) {
    const path = setting("path", "/health");
    const timeoutMs = setting("timeout_ms", 2000);
    const match = /^(https?):\/\/([^/]+)(\/.*)?$/.exec(target.endpoint.trim().replace(/\/+$/, ""));
    if (match === null) {
      throw { code: "invalid-input", message: `\`${target.endpoint}\` is not an http(s) URL`, retryable: false };
    }
    const [, scheme, authority, base] = match;
    const request = new OutgoingRequest(new Fields());
    request.setScheme({ tag: scheme === "https" ? "HTTPS" : "HTTP" });
    request.setAuthority(authority);
    request.setPathWithQuery((base ?? "") + path);
    const options = new RequestOptions();
    const timeoutNs = BigInt(timeoutMs) * 1000000n;
    try {
      options.setConnectTimeout(timeoutNs);
      options.setFirstByteTimeout(timeoutNs);
    } catch {
      // A host may refuse to set timeouts; its own deadline for the call still applies.
    }
    const start = Date.now();
    let future;
    try {
      future = handle(request, options);
    } catch (err) {
      return report("unhealthy", `request refused: ${err.payload?.tag ?? err}`, start);
    }
    let answer;
    while ((answer = future.get()) === undefined) {
      future.subscribe().block();
    }
    if (answer.tag === "err") {
      return report("unhealthy", "the response was already taken", start);
    }
    if (answer.val.tag === "err") {
      // e.g. connection-refused; HTTP-request-denied is the host's allow-list.
      return report("unhealthy", `no answer: ${answer.val.val.tag}`, start);
    }
    const code = answer.val.val.status();
    const status = code >= 200 && code <= 299 ? "healthy" : code >= 500 ? "unhealthy" : "degraded";
    return report(status, `HTTP ${code}`, start);
  },
};

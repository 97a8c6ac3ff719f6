//! `wrong-world`: a valid component that is not an Evolve plugin.
//!
//! Built for `wasm32-wasip2`, a binary becomes a WASI command: it exports `wasi:cli/run` and
//! nothing else. Its manifest still claims `kind = "meta-agent"`, so the host must refuse to
//! load it, naming the missing export `evolve:plugin/agent@0.1.0`.

fn main() {
    println!("wrong-world: I am a WASI command, not an evolve plugin");
}

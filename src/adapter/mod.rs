//! The proxy-wasm shell: contexts, host calls, metrics. No decision is made here; facts are
//! read from the host, handed to the core, and the core's answer is applied.

mod host;
mod http;
mod metrics;
mod root;
mod transitions;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<root::ReflexRoot>::default());
}}

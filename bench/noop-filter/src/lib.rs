//! The no-op filter: one root context, one HTTP context per request, every callback returns
//! `Continue` (the SDK's defaults). It reads nothing, calls the host for nothing, allocates
//! nothing per request beyond the context the SDK creates: the floor under any proxy-wasm
//! filter built with the same SDK and toolchain.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(NoopRoot));
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopHttp))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NoopHttp;

impl Context for NoopHttp {}

// Every callback keeps the SDK default: `Action::Continue`.
impl HttpContext for NoopHttp {}

//! `GET /ui/api/provider-presets` (ADM-2).

use deltallm_domain::provider::{PROVIDERS, WireFamily};
use serde::Serialize;

/// One provider preset.
#[derive(Debug, Serialize)]
pub struct ProviderPreset {
    /// Canonical provider key.
    pub provider: &'static str,
    /// Preset base URL (`null` for self-hosted providers).
    pub api_base: Option<&'static str>,
    /// OpenAI-compatible wire protocol.
    pub compat: bool,
    /// Supported workload modes.
    pub supported_modes: Vec<&'static str>,
}

/// The presets, in registry order.
pub fn provider_presets() -> Vec<ProviderPreset> {
    PROVIDERS
        .iter()
        .map(|p| ProviderPreset {
            provider: p.key,
            api_base: p.api_base,
            compat: p.family == WireFamily::OpenAiCompatible,
            supported_modes: p.modes.iter().map(|m| m.as_str()).collect(),
        })
        .collect()
}

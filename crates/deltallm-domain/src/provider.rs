//! The provider registry (VAL-1, VAL-2, VAL-5), provider inference (RUN-3) and
//! upstream model ids (DEP-8).

use serde::Serialize;

use crate::deployment::Mode;

/// Which wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WireFamily {
    /// OpenAI-compatible REST (`/chat/completions`, Bearer or custom header).
    OpenAiCompatible,
    /// Azure OpenAI (`api-key` header, `api-version`).
    Azure,
    /// Anthropic Messages API.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
    /// AWS Bedrock Converse (SigV4).
    Bedrock,
}

/// One entry of the provider registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderSpec {
    /// Canonical lower-case key (`azure_openai`, `openai`, ...).
    pub key: &'static str,
    /// Preset API base (with scheme) or `None` for self-hosted providers.
    pub api_base: Option<&'static str>,
    /// Wire protocol.
    pub family: WireFamily,
    /// Workload modes the provider supports (VAL-2).
    pub modes: &'static [Mode],
    /// Whether custom auth headers are allowed (VAL-5).
    pub custom_auth: bool,
    /// Leading model-id prefixes stripped for the upstream id (DEP-8).
    pub strip_prefixes: &'static [&'static str],
}

use Mode::{AudioSpeech as S, AudioTranscription as T, Chat as C, Embedding as E, ImageGeneration as I};

const CEIST: &[Mode] = &[C, E, I, S, T];
const CEI: &[Mode] = &[C, E, I];
const CEST: &[Mode] = &[C, E, S, T];
const CE: &[Mode] = &[C, E];
const CS: &[Mode] = &[C, S];
const CHAT: &[Mode] = &[C];

const fn compat(key: &'static str, api_base: Option<&'static str>, modes: &'static [Mode]) -> ProviderSpec {
    ProviderSpec { key, api_base, family: WireFamily::OpenAiCompatible, modes, custom_auth: true, strip_prefixes: &[] }
}

/// Every known provider, in the order the presets endpoint lists them.
pub const PROVIDERS: &[ProviderSpec] = &[
    ProviderSpec {
        key: "openai",
        api_base: Some("https://api.openai.com/v1"),
        family: WireFamily::OpenAiCompatible,
        modes: CEIST,
        custom_auth: true,
        strip_prefixes: &["openai/"],
    },
    ProviderSpec {
        key: "anthropic",
        api_base: Some("https://api.anthropic.com/v1"),
        family: WireFamily::Anthropic,
        modes: CHAT,
        custom_auth: false,
        strip_prefixes: &["anthropic/"],
    },
    ProviderSpec {
        key: "azure_openai",
        api_base: Some("https://{resource}.openai.azure.com/openai/v1"),
        family: WireFamily::Azure,
        modes: CEIST,
        custom_auth: false,
        strip_prefixes: &["azure/", "azure_openai/"],
    },
    compat("openrouter", Some("https://openrouter.ai/api/v1"), CEI),
    compat("groq", Some("https://api.groq.com/openai/v1"), CEST),
    compat("together", Some("https://api.together.xyz/v1"), CEI),
    compat("fireworks", Some("https://api.fireworks.ai/inference/v1"), CEI),
    compat("deepinfra", Some("https://api.deepinfra.com/v1/openai"), CEI),
    compat("perplexity", Some("https://api.perplexity.ai"), CHAT),
    ProviderSpec {
        key: "gemini",
        api_base: Some("https://generativelanguage.googleapis.com/v1beta"),
        family: WireFamily::Gemini,
        modes: CS,
        custom_auth: false,
        strip_prefixes: &["gemini/"],
    },
    ProviderSpec {
        key: "bedrock",
        api_base: Some("https://bedrock-runtime.{region}.amazonaws.com"),
        family: WireFamily::Bedrock,
        modes: CHAT,
        custom_auth: false,
        strip_prefixes: &["bedrock/"],
    },
    compat("vllm", None, CEIST),
    compat("lmstudio", None, CE),
    compat("ollama", None, CE),
];

/// Canonical provider key: trimmed, lower-cased, `azure` folded into `azure_openai`.
pub fn canonical(provider: &str) -> String {
    let p = provider.trim().to_ascii_lowercase();
    if p == "azure" { "azure_openai".to_owned() } else { p }
}

/// Registry entry for a provider string (aliases accepted); `None` if unknown.
pub fn lookup(provider: &str) -> Option<&'static ProviderSpec> {
    let key = canonical(provider);
    PROVIDERS.iter().find(|p| p.key == key)
}

/// RUN-3: the provider of a deployment: explicit `provider`, else the text
/// before the first `/` of `model`, else `unknown`.
pub fn infer(provider: Option<&str>, model: &str) -> String {
    if let Some(p) = provider.map(str::trim).filter(|p| !p.is_empty()) {
        return p.to_ascii_lowercase();
    }
    match model.split_once('/') {
        Some((prefix, _)) if !prefix.trim().is_empty() => prefix.trim().to_ascii_lowercase(),
        _ => "unknown".to_owned(),
    }
}

/// VAL-2: does `provider` support `mode`? Unknown providers allow every mode.
pub fn supports_mode(provider: &str, mode: Mode) -> bool {
    lookup(provider).is_none_or(|p| p.modes.contains(&mode))
}

/// VAL-5: may deployments of this provider set custom auth headers?
pub fn allows_custom_auth(provider: &str) -> bool {
    lookup(provider).is_some_and(|p| p.custom_auth)
}

/// Does this provider's streaming chat API accept `stream_options.include_usage`?
/// The gateway then asks for the final usage chunk on every stream, so
/// streamed requests are priced (SPEND-1) even when the client did not ask.
/// Providers not listed (perplexity, lmstudio, ollama, unknown) get the
/// client's body unchanged: an unknown field could be refused.
pub fn accepts_stream_usage_option(provider: &str) -> bool {
    matches!(
        canonical(provider).as_str(),
        "openai" | "azure_openai" | "vllm" | "groq" | "together" | "fireworks" | "deepinfra" | "openrouter"
    )
}

/// Wire family; unknown providers are treated as OpenAI-compatible (VAL-4).
pub fn family(provider: &str) -> WireFamily {
    lookup(provider).map_or(WireFamily::OpenAiCompatible, |p| p.family)
}

/// DEP-8: the upstream model id. A known prefix is stripped (case-insensitive)
/// only for openai, anthropic, azure, gemini and bedrock; others are verbatim.
pub fn upstream_model_id<'a>(provider: &str, model: &'a str) -> &'a str {
    let model = model.trim();
    if let Some(spec) = lookup(provider) {
        for prefix in spec.strip_prefixes {
            if model.len() > prefix.len()
                && model.is_char_boundary(prefix.len())
                && model[..prefix.len()].eq_ignore_ascii_case(prefix)
            {
                return &model[prefix.len()..];
            }
        }
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_ids_strip_only_listed_prefixes() {
        let cases = [
            ("openai", "openai/gpt-4o", "gpt-4o"),
            ("openai", "OpenAI/gpt-4o", "gpt-4o"),
            ("anthropic", "anthropic/claude-3", "claude-3"),
            ("azure", "azure/my-dep", "my-dep"),
            ("azure_openai", "azure_openai/my-dep", "my-dep"),
            ("gemini", "gemini/gemini-1.5", "gemini-1.5"),
            ("bedrock", "bedrock/anthropic.claude", "anthropic.claude"),
            ("groq", "openai/gpt-oss-120b", "openai/gpt-oss-120b"),
            ("vllm", "meta-llama/Llama-3", "meta-llama/Llama-3"),
            ("openai", "gpt-4o", "gpt-4o"),
            ("openrouter", "anthropic/claude-3", "anthropic/claude-3"),
        ];
        for (provider, model, want) in cases {
            assert_eq!(upstream_model_id(provider, model), want, "{provider} {model}");
        }
    }

    #[test]
    fn provider_inference_follows_run_3() {
        assert_eq!(infer(Some(" OpenAI "), "x"), "openai");
        assert_eq!(infer(None, "groq/llama"), "groq");
        assert_eq!(infer(Some(""), "plain"), "unknown");
    }

    #[test]
    fn mode_support_table_matches_val_2() {
        use Mode::*;
        let all = [Chat, Embedding, ImageGeneration, AudioSpeech, AudioTranscription, Rerank];
        let expect: &[(&str, &str)] = &[
            ("openai", "CEIST"),
            ("azure", "CEIST"),
            ("azure_openai", "CEIST"),
            ("vllm", "CEIST"),
            ("openrouter", "CEI"),
            ("together", "CEI"),
            ("fireworks", "CEI"),
            ("deepinfra", "CEI"),
            ("groq", "CEST"),
            ("lmstudio", "CE"),
            ("ollama", "CE"),
            ("gemini", "CS"),
            ("anthropic", "C"),
            ("perplexity", "C"),
            ("bedrock", "C"),
            ("my-private-llm", "CEISTR"),
        ];
        for (provider, letters) in expect {
            for mode in all {
                let letter = match mode {
                    Chat => 'C',
                    Embedding => 'E',
                    ImageGeneration => 'I',
                    AudioSpeech => 'S',
                    AudioTranscription => 'T',
                    Rerank => 'R',
                };
                assert_eq!(supports_mode(provider, mode), letters.contains(letter), "{provider} {mode:?}");
            }
        }
    }

    #[test]
    fn custom_auth_only_for_openai_compatible_known_providers() {
        for p in [
            "openai",
            "openrouter",
            "groq",
            "together",
            "fireworks",
            "deepinfra",
            "perplexity",
            "vllm",
            "lmstudio",
            "ollama",
        ] {
            assert!(allows_custom_auth(p), "{p}");
        }
        for p in ["azure", "azure_openai", "anthropic", "gemini", "bedrock", "unknown-thing"] {
            assert!(!allows_custom_auth(p), "{p}");
        }
    }
}

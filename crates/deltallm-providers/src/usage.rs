//! Usage reported by the upstream, normalized to OpenAI token fields plus
//! the other billing units SPEND-1 prices (images, characters, seconds).

use serde::Deserialize;

/// Billable usage of one upstream call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Prompt (input) tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's prompt cache.
    pub prompt_tokens_cached: Option<u64>,
    /// Generated images.
    pub images: Option<u64>,
    /// Input characters (text to speech).
    pub characters: Option<u64>,
    /// Audio seconds (transcription).
    pub seconds: Option<f64>,
}

/// The OpenAI `usage` object and the variants compatible servers send
/// (`input_tokens`/`output_tokens`, transcription `seconds`).
#[derive(Debug, Deserialize)]
pub(crate) struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<CachedDetails>,
    input_tokens_details: Option<CachedDetails>,
    seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct CachedDetails {
    cached_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(w: WireUsage) -> Self {
        let prompt = w.prompt_tokens.or(w.input_tokens).unwrap_or(0);
        let completion = w.completion_tokens.or(w.output_tokens).unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: w.total_tokens.unwrap_or(prompt + completion),
            prompt_tokens_cached: w.prompt_tokens_details.or(w.input_tokens_details).and_then(|d| d.cached_tokens),
            seconds: w.seconds,
            ..Usage::default()
        }
    }
}

/// `usage` of an OpenAI-shaped JSON body (response or stream chunk), if any.
/// Everything else in the body is skipped without building values.
pub(crate) fn from_body(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Envelope {
        usage: Option<WireUsage>,
    }
    serde_json::from_slice::<Envelope>(body).ok()?.usage.map(Usage::from)
}

/// Cheap pre-check so stream chunks without usage are never parsed.
pub(crate) fn mentions_usage(payload: &[u8]) -> bool {
    payload.windows(7).any(|w| w == b"\"usage\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_chat_usage_with_cache() {
        let u = from_body(
            br#"{"id":"x","usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                prompt_tokens_cached: Some(4),
                ..Usage::default()
            }
        );
    }

    #[test]
    fn embeddings_and_transcription_variants() {
        let e = from_body(br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#).unwrap();
        assert_eq!((e.prompt_tokens, e.completion_tokens, e.total_tokens), (8, 0, 8));
        let t = from_body(br#"{"text":"hi","usage":{"type":"duration","seconds":3.5}}"#).unwrap();
        assert_eq!(t.seconds, Some(3.5));
        let io = from_body(br#"{"usage":{"input_tokens":3,"output_tokens":4}}"#).unwrap();
        assert_eq!((io.prompt_tokens, io.completion_tokens, io.total_tokens), (3, 4, 7));
        assert_eq!(from_body(br#"{"usage":null}"#), None);
        assert_eq!(from_body(br#"{"id":"x"}"#), None);
        assert!(mentions_usage(br#"{"usage":null}"#));
        assert!(!mentions_usage(br#"{"choices":[]}"#));
    }
}

//! The OpenAI endpoints the gateway forwards.

use std::fmt;

/// Which OpenAI endpoint a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `/chat/completions`.
    Chat,
    /// `/completions` (legacy text completions).
    Completions,
    /// `/embeddings`.
    Embeddings,
    /// `/images/generations`.
    ImageGeneration,
    /// `/audio/speech`.
    AudioSpeech,
    /// `/audio/transcriptions` (multipart, see `Providers::transcribe`).
    AudioTranscription,
    /// `/rerank`.
    Rerank,
}

impl Operation {
    /// Every operation, in index order.
    pub const ALL: [Operation; 7] = [
        Operation::Chat,
        Operation::Completions,
        Operation::Embeddings,
        Operation::ImageGeneration,
        Operation::AudioSpeech,
        Operation::AudioTranscription,
        Operation::Rerank,
    ];

    /// Path segments below `api_base` on OpenAI-compatible upstreams.
    pub fn path(self) -> &'static str {
        match self {
            Operation::Chat => "chat/completions",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::ImageGeneration => "images/generations",
            Operation::AudioSpeech => "audio/speech",
            Operation::AudioTranscription => "audio/transcriptions",
            Operation::Rerank => "rerank",
        }
    }

    /// Chat-family endpoints reject unknown providers (VAL-4).
    pub fn is_chat_family(self) -> bool {
        matches!(self, Operation::Chat | Operation::Completions)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_all_order() {
        for (i, op) in Operation::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i);
        }
    }
}

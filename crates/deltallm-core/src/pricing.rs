//! Cost of a request from the served deployment's prices (SPEND-1).

use deltallm_domain::deployment::Mode;
use serde_json::{Map, Value};

/// Per-unit prices read once at registry build.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pricing {
    input_per_token: Option<f64>,
    output_per_token: Option<f64>,
    input_per_token_cache_hit: Option<f64>,
    input_per_character: Option<f64>,
    input_per_second: Option<f64>,
    input_per_image: Option<f64>,
}

/// Units a request consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Units {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cached prompt tokens (subset of prompt tokens).
    pub prompt_tokens_cached: u64,
    /// Images generated.
    pub images: u64,
    /// Characters synthesized.
    pub characters: u64,
    /// Audio seconds.
    pub seconds: f64,
}

/// A priced request.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    /// USD, rounded to 10 decimals.
    pub usd: f64,
    /// `token`, `image`, `character` or `second`.
    pub billing_unit: &'static str,
    /// Why the cost is 0 when no price applied.
    pub unpriced_reason: Option<&'static str>,
}

fn price(info: &Map<String, Value>, key: &str) -> Option<f64> {
    info.get(key).and_then(Value::as_f64)
}

fn round10(v: f64) -> f64 {
    (v * 1e10).round() / 1e10
}

impl Pricing {
    /// Read prices from `model_info`.
    pub fn from_model_info(info: &Map<String, Value>) -> Self {
        Self {
            input_per_token: price(info, "input_cost_per_token"),
            output_per_token: price(info, "output_cost_per_token"),
            input_per_token_cache_hit: price(info, "input_cost_per_token_cache_hit"),
            input_per_character: price(info, "input_cost_per_character"),
            input_per_second: price(info, "input_cost_per_second"),
            input_per_image: price(info, "input_cost_per_image"),
        }
    }

    /// Cost of one unit of usage (cost-based routing): input + output token price.
    pub fn unit_cost(&self) -> Option<f64> {
        match (self.input_per_token, self.output_per_token) {
            (None, None) => self.input_per_image.or(self.input_per_character).or(self.input_per_second),
            (i, o) => Some(i.unwrap_or(0.0) + o.unwrap_or(0.0)),
        }
    }

    /// SPEND-1 cost for `mode`.
    pub fn cost(&self, mode: Mode, units: &Units) -> Cost {
        let unpriced = |unit: &'static str, reason: &'static str| Cost {
            usd: 0.0,
            billing_unit: unit,
            unpriced_reason: Some(reason),
        };
        match mode {
            Mode::ImageGeneration => match self.input_per_image {
                Some(p) => Cost { usd: round10(units.images as f64 * p), billing_unit: "image", unpriced_reason: None },
                None => unpriced("image", "no input_cost_per_image configured"),
            },
            Mode::AudioSpeech => {
                if let (Some(_), true) = (self.input_per_token, units.prompt_tokens > 0) {
                    self.token_cost(units)
                } else if let Some(p) = self.input_per_character {
                    Cost { usd: round10(units.characters as f64 * p), billing_unit: "character", unpriced_reason: None }
                } else if let Some(p) = self.input_per_second {
                    Cost { usd: round10(units.seconds * p), billing_unit: "second", unpriced_reason: None }
                } else {
                    unpriced("character", "no token, character or second price configured")
                }
            }
            Mode::AudioTranscription => {
                if let (Some(_), true) = (self.input_per_token, units.prompt_tokens > 0) {
                    self.token_cost(units)
                } else if let Some(p) = self.input_per_second {
                    Cost { usd: round10(units.seconds * p), billing_unit: "second", unpriced_reason: None }
                } else {
                    unpriced("second", "no token or second price configured")
                }
            }
            Mode::Chat | Mode::Embedding | Mode::Rerank => {
                if self.input_per_token.is_none() && self.output_per_token.is_none() {
                    unpriced("token", "no token prices configured for the deployment")
                } else {
                    self.token_cost(units)
                }
            }
        }
    }

    fn token_cost(&self, u: &Units) -> Cost {
        let input = self.input_per_token.unwrap_or(0.0);
        let cached = u.prompt_tokens_cached.min(u.prompt_tokens);
        let (uncached, cached_price) = match self.input_per_token_cache_hit {
            Some(p) => (u.prompt_tokens - cached, cached as f64 * p),
            None => (u.prompt_tokens, 0.0),
        };
        let usd =
            uncached as f64 * input + cached_price + u.completion_tokens as f64 * self.output_per_token.unwrap_or(0.0);
        Cost { usd: round10(usd), billing_unit: "token", unpriced_reason: None }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pricing(v: Value) -> Pricing {
        Pricing::from_model_info(v.as_object().unwrap())
    }

    #[test]
    fn token_cost_uses_input_and_output_prices() {
        let p = pricing(json!({"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}));
        let c = p.cost(Mode::Chat, &Units { prompt_tokens: 100, completion_tokens: 50, ..Default::default() });
        assert_eq!(c.usd, 0.0002);
        assert_eq!(c.billing_unit, "token");
        assert!(c.unpriced_reason.is_none());
    }

    #[test]
    fn cached_tokens_use_cache_hit_price() {
        let p = pricing(json!({"input_cost_per_token": 0.00001, "input_cost_per_token_cache_hit": 0.000001}));
        let c = p.cost(Mode::Chat, &Units { prompt_tokens: 100, prompt_tokens_cached: 40, ..Default::default() });
        assert_eq!(c.usd, 0.00064);
    }

    #[test]
    fn unpriced_is_zero_with_reason() {
        let c = pricing(json!({})).cost(Mode::Chat, &Units { prompt_tokens: 10, ..Default::default() });
        assert_eq!(c.usd, 0.0);
        assert!(c.unpriced_reason.is_some());
    }

    #[test]
    fn images_characters_seconds() {
        let p = pricing(
            json!({"input_cost_per_image": 0.04, "input_cost_per_character": 0.000015, "input_cost_per_second": 0.0001}),
        );
        assert_eq!(p.cost(Mode::ImageGeneration, &Units { images: 3, ..Default::default() }).usd, 0.12);
        let speech = p.cost(Mode::AudioSpeech, &Units { characters: 1000, ..Default::default() });
        assert_eq!((speech.usd, speech.billing_unit), (0.015, "character"));
        let tr = p.cost(Mode::AudioTranscription, &Units { seconds: 30.0, ..Default::default() });
        assert_eq!((tr.usd, tr.billing_unit), (0.003, "second"));
    }
}

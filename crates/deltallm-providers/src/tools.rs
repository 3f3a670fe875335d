//! OpenAI tool calling as the non-OpenAI adapters read it: function tools,
//! `tool_choice`, and the calls of assistant turns. Each adapter maps these
//! to its own wire shape.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// An assistant turn's `tool_calls` element.
#[derive(Deserialize)]
pub(crate) struct ToolCall {
    pub(crate) id: String,
    pub(crate) function: FunctionCall,
}

/// The function part of a tool call.
#[derive(Deserialize)]
pub(crate) struct FunctionCall {
    pub(crate) name: String,
    /// JSON text, as OpenAI sends it.
    #[serde(default)]
    pub(crate) arguments: String,
}

impl ToolCall {
    /// The arguments as a JSON value (`{}` when empty); text that is not JSON is the client's error.
    pub(crate) fn input(&self) -> Result<Value> {
        if self.function.arguments.trim().is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_str(&self.function.arguments).map_err(|_| {
            Error::invalid(format!("tool call '{}' has arguments that are not JSON", self.id)).with_param("messages")
        })
    }
}

/// One `{"type": "function", "function": {...}}` tool.
pub(crate) struct FunctionTool {
    pub(crate) name: String,
    pub(crate) description: Option<Value>,
    pub(crate) parameters: Option<Value>,
}

/// The request's `tools`: function tools only (others are refused for `provider`);
/// `None` when absent, `null` or empty.
pub(crate) fn function_tools(raw: &str, provider: &str) -> Result<Option<Vec<FunctionTool>>> {
    let tools: Option<Vec<Value>> = serde_json::from_str(raw)
        .map_err(|e| Error::invalid(format!("Invalid 'tools' field: {e}")).with_param("tools"))?;
    let Some(tools) = tools.filter(|t| !t.is_empty()) else { return Ok(None) };
    tools
        .into_iter()
        .map(|t| {
            let f = t
                .get("function")
                .filter(|_| t.get("type").and_then(Value::as_str).is_none_or(|k| k == "function"))
                .ok_or_else(|| {
                    Error::invalid(format!("Only function tools are supported for provider '{provider}'"))
                        .with_param("tools")
                })?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::invalid("every tool needs function.name").with_param("tools"))?;
            let present = |key: &str| f.get(key).filter(|v| !v.is_null()).cloned();
            Ok(FunctionTool {
                name: name.to_owned(),
                description: present("description"),
                parameters: present("parameters"),
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The request's `tool_choice`.
pub(crate) enum ToolChoice {
    Auto,
    Required,
    None,
    /// `{"type": "function", "function": {"name": ...}}`.
    Function(String),
}

/// `None` when absent or `null`.
pub(crate) fn tool_choice(raw: Option<&str>) -> Result<Option<ToolChoice>> {
    let Some(raw) = raw else { return Ok(None) };
    let choice: Value = serde_json::from_str(raw)
        .map_err(|_| Error::invalid("Invalid 'tool_choice' field").with_param("tool_choice"))?;
    Ok(Some(match &choice {
        Value::Null => return Ok(None),
        Value::String(s) if s == "auto" => ToolChoice::Auto,
        Value::String(s) if s == "required" => ToolChoice::Required,
        Value::String(s) if s == "none" => ToolChoice::None,
        Value::Object(_) => match choice.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => ToolChoice::Function(name.to_owned()),
            None => return Err(Error::invalid("tool_choice needs function.name").with_param("tool_choice")),
        },
        _ => return Err(Error::invalid("Unsupported 'tool_choice' value").with_param("tool_choice")),
    }))
}

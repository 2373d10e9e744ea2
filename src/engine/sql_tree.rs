//! What a query sent over the network would call, read from DuckDB's own parse tree before DuckDB binds it.
//!
//! Binding a statement already acts: an unknown function makes DuckDB load (and, by its defaults, download) the
//! extension that has it, and a table function with side effects runs as a query. So a query from a client whose
//! listener allows only reading is parsed first (`json_serialize_sql`, which parses and never binds), and the
//! names of the functions it calls are checked here: none may have side effects, and each must already exist
//! in the host (no extension is loaded on a client's behalf). `query('...')` is followed into its text.

use serde_json::Value;

/// Functions that change something although a query calls them: the database file (checkpoints), sequences,
/// the session's random seed.
const SIDE_EFFECTS: [&str; 4] = ["checkpoint", "force_checkpoint", "nextval", "setseed"];

/// Functions whose first argument is SQL text they run.
const RUNS_TEXT: [&str; 1] = ["query"];

/// What a parse tree calls.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// Function names, lower case, in the order met (repeats removed).
    pub functions: Vec<String>,
    /// Statement texts passed to `query()`, to be parsed in turn.
    pub nested: Vec<String>,
}

/// Why a query is refused before it is bound.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It is not a query (the serializer takes only SELECT statements).
    NotAQuery,
    /// DuckDB's parser refused it (its message).
    Invalid(String),
    /// DuckDB could not describe it for any other reason: it is refused, since it cannot be checked.
    Unchecked(String),
    SideEffect(String),
    /// `query()` with an argument that is not a constant string.
    DynamicText(String),
}

/// Reads `json_serialize_sql`'s answer: the calls of its statements, or why the text is not a plain query.
pub fn calls_of(serialized: &str) -> Result<Calls, Refusal> {
    // DuckDB allows expressions 1,000 deep, a few JSON levels each: past serde_json's default limit of 128. This
    // runs on a statement thread (16 MiB of stack; a level of parsing takes well under 1 KiB of it).
    let mut reader = serde_json::Deserializer::from_str(serialized);
    reader.disable_recursion_limit();
    let tree: Value = serde::Deserialize::deserialize(&mut reader).map_err(|e| Refusal::Unchecked(e.to_string()))?;
    if tree.get("error").and_then(Value::as_bool) != Some(false) {
        let message = tree.get("error_message").and_then(Value::as_str).unwrap_or("the statement does not parse");
        if message.contains("Only SELECT statements") {
            return Err(Refusal::NotAQuery);
        }
        if tree.get("error_type").and_then(Value::as_str) == Some("parser") {
            return Err(Refusal::Invalid(format!("Parser Error: {message}")));
        }
        return Err(Refusal::Unchecked(message.to_string()));
    }
    let mut calls = Calls::default();
    let mut stack = vec![&tree];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                if map.get("class").and_then(Value::as_str) == Some("FUNCTION")
                    && let Some(name) = map.get("function_name").and_then(Value::as_str)
                {
                    let name = name.to_ascii_lowercase();
                    if SIDE_EFFECTS.contains(&name.as_str()) {
                        return Err(Refusal::SideEffect(name));
                    }
                    if RUNS_TEXT.contains(&name.as_str()) {
                        let text = first_argument(map).and_then(constant_text);
                        match text {
                            Some(t) => calls.nested.push(t.to_string()),
                            None => return Err(Refusal::DynamicText(name)),
                        }
                    }
                    if !calls.functions.contains(&name) {
                        calls.functions.push(name);
                    }
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items.iter()),
            _ => {}
        }
    }
    Ok(calls)
}

/// A call's first argument: `children[0]` (DuckDB 1.x) or `arguments[0].expression` (2.x).
fn first_argument(call: &serde_json::Map<String, Value>) -> Option<&Value> {
    if let Some(first) = call.get("children").and_then(Value::as_array).and_then(|c| c.first()) {
        return Some(first);
    }
    call.get("arguments").and_then(Value::as_array).and_then(|a| a.first()).and_then(|a| a.get("expression"))
}

/// The text of a constant string expression: `value.value` (1.x) or `literal.text` of kind STRING (2.x).
fn constant_text(expr: &Value) -> Option<&str> {
    if expr.get("class").and_then(Value::as_str) != Some("CONSTANT") {
        return None;
    }
    if let Some(v) = expr.get("value") {
        return v.get("is_null").and_then(Value::as_bool).filter(|n| !n).and(v.get("value")).and_then(Value::as_str);
    }
    let literal = expr.get("literal")?;
    (literal.get("kind").and_then(Value::as_str) == Some("STRING"))
        .then(|| literal.get("text").and_then(Value::as_str))
        .flatten()
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::NotAQuery => {
                "this listener runs only statements that read (sql := 'read_only'); this statement would change the database".into()
            }
            Refusal::Invalid(m) => m.clone(),
            Refusal::Unchecked(m) => format!("this statement cannot be checked before it runs, so it does not run: {m}"),
            Refusal::SideEffect(f) => format!(
                "{f}() changes the database or the session although a query calls it; this listener runs only statements that \
                 read (sql := 'read_only')"
            ),
            Refusal::DynamicText(f) => {
                format!("{f}() takes a constant string over the network, so that what it runs can be checked before it runs")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str, children: Value) -> Value {
        serde_json::json!({"class": "FUNCTION", "type": "FUNCTION", "function_name": name, "children": children})
    }

    fn constant(text: &str) -> Value {
        serde_json::json!({"class": "CONSTANT", "value": {"is_null": false, "value": text}})
    }

    fn tree(select: Value, from: Value) -> String {
        serde_json::json!({"error": false, "statements": [{"node": {"select_list": [select], "from_table": from}}]})
            .to_string()
    }

    #[test]
    fn calls_are_collected_and_side_effects_and_dynamic_text_refused() {
        let from = serde_json::json!({"type": "TABLE_FUNCTION", "function": function("query", serde_json::json!([constant("SELECT 1")]))});
        let calls = calls_of(&tree(function("ABS", serde_json::json!([])), from)).unwrap();
        let mut names = calls.functions.clone();
        names.sort();
        assert_eq!(names, vec!["abs".to_string(), "query".to_string()]);
        assert_eq!(calls.nested, vec!["SELECT 1".to_string()]);
        let from =
            serde_json::json!({"type": "TABLE_FUNCTION", "function": function("checkpoint", serde_json::json!([]))});
        assert_eq!(calls_of(&tree(constant("x"), from)), Err(Refusal::SideEffect("checkpoint".into())));
        let dynamic = function("query", serde_json::json!([function("concat", serde_json::json!([]))]));
        assert_eq!(calls_of(&tree(dynamic, Value::Null)), Err(Refusal::DynamicText("query".into())));
        let not_select = r#"{"error":true,"error_type":"not implemented","error_message":"Only SELECT statements can be serialized to json!"}"#;
        assert_eq!(calls_of(not_select), Err(Refusal::NotAQuery));
        let deep =
            r#"{"error":true,"error_type":"parser","error_message":"Max expression depth limit of 1000 exceeded"}"#;
        assert_eq!(
            calls_of(deep),
            Err(Refusal::Invalid("Parser Error: Max expression depth limit of 1000 exceeded".into()))
        );
        // DuckDB 2's shape: arguments[].expression with a literal.
        let v2 = serde_json::json!({"class": "FUNCTION", "function_name": "query", "arguments": [
            {"name": "", "expression": {"class": "CONSTANT", "literal": {"kind": "STRING", "text": "FROM checkpoint()"}}}]});
        assert_eq!(calls_of(&tree(v2, Value::Null)).unwrap().nested, vec!["FROM checkpoint()".to_string()]);
    }
}

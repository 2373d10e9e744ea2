//! What a statement sent over the network would touch, read from DuckDB's own parse tree before DuckDB binds it.
//!
//! Binding a statement already acts: a table function with side effects runs as a query, and an administrative
//! function could be reached. So a query from a client is parsed first (`json_serialize_sql`, which parses and
//! never binds) and read here: the tables it names (with their catalog and schema, as DuckDB parsed them), the
//! table names `query_table` is given as constants, and the functions it calls. With `read_only`
//! ([`Strictness::ReadOnly`]) no function may have side effects and `query('...')` must be given a constant text,
//! which is followed into; with `read_write` constant texts are followed too, and the rest is the client's.
//! DuckDB's serializer takes only SELECT statements; other statements are left to [`identifiers`].

use serde_json::Value;

/// Functions that change something although a query calls them: the database file (checkpoints), sequences,
/// the session's random seed.
const SIDE_EFFECTS: [&str; 4] = ["checkpoint", "force_checkpoint", "nextval", "setseed"];

/// Functions whose first argument is SQL text they run.
const RUNS_TEXT: [&str; 1] = ["query"];

/// Functions whose constant string arguments are names of tables they read.
const READS_NAMED: [&str; 1] = ["query_table"];

/// How strictly a query is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Functions with side effects and `query()` over a text built at run time are refused.
    ReadOnly,
    /// Only what is named is read.
    ReadWrite,
}

/// A table a query names: catalog and schema as written (empty when left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub catalog: String,
    pub schema: String,
    pub table: String,
}

/// What a parse tree calls.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// Function names, lower case, in the order met (repeats removed).
    pub functions: Vec<String>,
    /// Statement texts passed to `query()`, to be parsed in turn.
    pub nested: Vec<String>,
    /// Tables named in the query's FROM clauses.
    pub tables: Vec<TableRef>,
    /// Table names given to `query_table` as constants (possibly qualified: `schema.table`).
    pub table_texts: Vec<String>,
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

/// Reads `json_serialize_sql`'s answer: the calls and tables of its statements, or why the text is not a plain
/// query (or is refused at `strictness`).
pub fn calls_of(serialized: &str, strictness: Strictness) -> Result<Calls, Refusal> {
    // DuckDB allows expressions 1,000 deep, a few JSON levels each: past serde_json's default limit of 128. This
    // runs on a statement thread (16 MiB of stack; a level of parsing takes well under 1 KiB of it).
    let mut reader = serde_json::Deserializer::from_str(serialized);
    reader.disable_recursion_limit();
    let tree: Value = serde::Deserialize::deserialize(&mut reader).map_err(|e| Refusal::Unchecked(e.to_string()))?;
    if tree.get("error").and_then(Value::as_bool) != Some(false) {
        let message = tree.get("error_message").and_then(Value::as_str).unwrap_or("the statement does not parse");
        // The serializer refuses every statement but SELECT as "not implemented"; a parser error is the client's.
        return Err(match tree.get("error_type").and_then(Value::as_str) {
            Some("not implemented") => Refusal::NotAQuery,
            Some("parser") => Refusal::Invalid(format!("Parser Error: {message}")),
            _ => Refusal::Unchecked(message.to_string()),
        });
    }
    let mut calls = Calls::default();
    let mut stack = vec![&tree];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                if map.get("type").and_then(Value::as_str) == Some("BASE_TABLE") {
                    let part = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                    calls.tables.push(TableRef {
                        catalog: part("catalog_name"),
                        schema: part("schema_name"),
                        table: part("table_name"),
                    });
                }
                if map.get("class").and_then(Value::as_str) == Some("FUNCTION")
                    && let Some(name) = map.get("function_name").and_then(Value::as_str)
                {
                    let name = name.to_ascii_lowercase();
                    let strict = strictness == Strictness::ReadOnly;
                    if strict && SIDE_EFFECTS.contains(&name.as_str()) {
                        return Err(Refusal::SideEffect(name));
                    }
                    if RUNS_TEXT.contains(&name.as_str()) {
                        let text = first_argument(map).and_then(constant_text);
                        match text {
                            Some(t) => calls.nested.push(t.to_string()),
                            None if strict => return Err(Refusal::DynamicText(name)),
                            None => {}
                        }
                    }
                    if READS_NAMED.contains(&name.as_str()) {
                        constant_texts(&Value::Object(map.clone()), &mut calls.table_texts);
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

/// Every constant string under `node`.
fn constant_texts(node: &Value, out: &mut Vec<String>) {
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        if let Some(t) = constant_text(n) {
            out.push(t.to_string());
        }
        match n {
            Value::Object(map) => stack.extend(map.values()),
            Value::Array(items) => stack.extend(items.iter()),
            _ => {}
        }
    }
}

/// The identifiers of a statement's text, lower case: words and double-quoted names, never what is inside a
/// string literal (`'...'`, `E'...'`, `$tag$...$tag$`) or a comment. For statements DuckDB's serializer does not
/// take (anything but SELECT), the names a statement could use.
pub fn identifiers(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let rest = &sql[i..];
        if rest.starts_with("--") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            // DuckDB's block comments nest.
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if sql[j..].starts_with("/*") {
                    depth += 1;
                    j += 2;
                } else if sql[j..].starts_with("*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            i = j;
        } else if b[i] == b'\'' {
            // A string; '' inside is a quote (E'..' strings: a backslash escapes too).
            let escapes = i > 0 && (b[i - 1] == b'e' || b[i - 1] == b'E') && (i < 2 || !word(b[i - 2]));
            i += 1;
            while i < b.len() {
                if escapes && b[i] == b'\\' {
                    i += 2;
                } else if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' {
            let mut name = String::new();
            i += 1;
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        name.push('"');
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    let ch = sql[i..].chars().next().unwrap_or('\0');
                    name.push(ch);
                    i += ch.len_utf8();
                }
            }
            out.push(name.to_lowercase());
        } else if b[i] == b'$'
            && let Some(tag_end) = rest[1..].find('$').map(|e| e + 2)
        {
            // A dollar-quoted string: $$...$$ or $tag$...$tag$.
            let tag = &rest[..tag_end];
            if tag[1..tag.len() - 1].bytes().all(word) {
                i += tag_end + rest[tag_end..].find(tag).map_or(rest.len() - tag_end, |e| e + tag.len());
            } else {
                i += 1;
            }
        } else if word(b[i]) {
            let start = i;
            while i < b.len() && word(b[i]) {
                i += 1;
            }
            let text = &sql[start..i];
            // A number or a parameter ($1, $name) is not a name, nor the E of E'...' (a string follows).
            let number = b[start].is_ascii_digit() || b[start] == b'$';
            let string_prefix = text.eq_ignore_ascii_case("e") && b.get(i) == Some(&b'\'');
            if !(number || string_prefix) {
                out.push(text.to_lowercase());
            }
        } else {
            i += sql[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    out
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

    fn calls_of_ro(serialized: &str) -> Result<Calls, Refusal> {
        calls_of(serialized, Strictness::ReadOnly)
    }

    #[test]
    fn tables_and_query_table_names_are_collected_and_read_write_is_lenient() {
        let from = serde_json::json!({"type": "BASE_TABLE", "catalog_name": "lake", "schema_name": "arrowport", "table_name": "requests"});
        let calls =
            calls_of(&tree(function("checkpoint", serde_json::json!([])), from), Strictness::ReadWrite).unwrap();
        assert_eq!(
            calls.tables,
            vec![TableRef { catalog: "lake".into(), schema: "arrowport".into(), table: "requests".into() }]
        );
        let list = function("list_value", serde_json::json!([constant("arrowport.tokens"), constant("t")]));
        let from = serde_json::json!({"type": "TABLE_FUNCTION", "function": function("query_table", serde_json::json!([list]))});
        let mut texts = calls_of(&tree(constant("x"), from), Strictness::ReadWrite).unwrap().table_texts;
        texts.sort();
        assert_eq!(texts, vec!["arrowport.tokens".to_string(), "t".to_string()]);
        let dynamic = function("query", serde_json::json!([function("concat", serde_json::json!([]))]));
        assert!(calls_of(&tree(dynamic, Value::Null), Strictness::ReadWrite).unwrap().nested.is_empty());
    }

    #[test]
    fn identifiers_skip_strings_and_comments() {
        let ids = identifiers(
            "UPDATE \"ARROWPORT\".requests /* arrowport /* nested */ still */ SET note = 'arrowport''s' -- arrowport\n\
             WHERE x = E'it\\'s arrowport' AND y = $$arrowport$$ AND z = $t$ arrowport $t$ AND w = $1 AND v = 2e3",
        );
        assert_eq!(
            ids,
            [
                "update",
                "arrowport",
                "requests",
                "set",
                "note",
                "where",
                "x",
                "and",
                "y",
                "and",
                "z",
                "and",
                "w",
                "and",
                "v"
            ]
        );
        assert_eq!(identifiers("SELECT \"a\"\"b\", ünï FROM t"), ["select", "a\"b", "ünï", "from", "t"]);
        assert_eq!(identifiers("SELECT 'unterminated"), ["select"]);
        assert_eq!(identifiers("/* unterminated"), Vec::<String>::new());
    }

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
        let calls = calls_of_ro(&tree(function("ABS", serde_json::json!([])), from)).unwrap();
        let mut names = calls.functions.clone();
        names.sort();
        assert_eq!(names, vec!["abs".to_string(), "query".to_string()]);
        assert_eq!(calls.nested, vec!["SELECT 1".to_string()]);
        let from =
            serde_json::json!({"type": "TABLE_FUNCTION", "function": function("checkpoint", serde_json::json!([]))});
        assert_eq!(calls_of_ro(&tree(constant("x"), from)), Err(Refusal::SideEffect("checkpoint".into())));
        let dynamic = function("query", serde_json::json!([function("concat", serde_json::json!([]))]));
        assert_eq!(calls_of_ro(&tree(dynamic, Value::Null)), Err(Refusal::DynamicText("query".into())));
        let not_select = r#"{"error":true,"error_type":"not implemented","error_message":"Only SELECT statements can be serialized to json!"}"#;
        assert_eq!(calls_of_ro(not_select), Err(Refusal::NotAQuery));
        let deep =
            r#"{"error":true,"error_type":"parser","error_message":"Max expression depth limit of 1000 exceeded"}"#;
        assert_eq!(
            calls_of_ro(deep),
            Err(Refusal::Invalid("Parser Error: Max expression depth limit of 1000 exceeded".into()))
        );
        // DuckDB 2's shape: arguments[].expression with a literal.
        let v2 = serde_json::json!({"class": "FUNCTION", "function_name": "query", "arguments": [
            {"name": "", "expression": {"class": "CONSTANT", "literal": {"kind": "STRING", "text": "FROM checkpoint()"}}}]});
        assert_eq!(calls_of_ro(&tree(v2, Value::Null)).unwrap().nested, vec!["FROM checkpoint()".to_string()]);
    }
}

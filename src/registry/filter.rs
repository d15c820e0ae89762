//! AIP-160 filters: a small recursive-descent parser (positions are byte
//! offsets into the filter), a compiler that checks every field path, operator
//! and value against the resource's descriptor, and an evaluator over records.
//!
//! Grammar (AIP-160; OR binds tighter than AND, as the AIP says):
//! ```text
//! expression  = sequence { "AND" sequence }
//! sequence    = factor { factor }            (juxtaposition means AND)
//! factor      = term { "OR" term }
//! term        = [ "NOT" | "-" ] simple
//! simple      = restriction | "(" expression ")"
//! restriction = path [ comparator value ]     (a bare path is refused)
//! comparator  = "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
//! value       = quoted string | word | "*"
//! ```

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind as FieldKind, MessageDescriptor, Value};

use crate::registry::dates;

pub const MAX_FILTER_LENGTH: usize = 2048;
pub const MAX_DEPTH: usize = 32;

/// A filter problem, with the byte offset it was found at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub position: usize,
    pub message: String,
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

fn error<T>(position: usize, message: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError { position, message: message.into() })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Has => ":",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    LParen,
    RParen,
    Minus,
    Comparator(Op),
    Quoted(String),
    Word(String),
}

fn lex(text: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                tokens.push((start, Token::LParen));
                i += 1;
            }
            b')' => {
                tokens.push((start, Token::RParen));
                i += 1;
            }
            b'"' | b'\'' => {
                let mut value = String::new();
                i += 1;
                loop {
                    let Some(&b) = bytes.get(i) else { return error(start, "unterminated string") };
                    if b == c {
                        i += 1;
                        break;
                    }
                    if b == b'\\' {
                        match bytes.get(i + 1) {
                            Some(&e @ (b'"' | b'\'' | b'\\')) => value.push(e as char),
                            _ => return error(i, "only \\\", \\' and \\\\ escapes are allowed"),
                        }
                        i += 2;
                        continue;
                    }
                    let ch = text[i..].chars().next().expect("in bounds");
                    value.push(ch);
                    i += ch.len_utf8();
                }
                tokens.push((start, Token::Quoted(value)));
            }
            b'<' | b'>' | b'!' | b'=' | b':' => {
                let two = bytes.get(i + 1) == Some(&b'=');
                let op = match (c, two) {
                    (b'<', true) => Op::Le,
                    (b'<', false) => Op::Lt,
                    (b'>', true) => Op::Ge,
                    (b'>', false) => Op::Gt,
                    (b'!', true) => Op::Ne,
                    (b'=', _) => Op::Eq,
                    (b':', _) => Op::Has,
                    _ => return error(start, "unexpected '!': write != for not-equal, NOT or - for negation"),
                };
                i += if two && c != b'=' && c != b':' { 2 } else { 1 };
                tokens.push((start, Token::Comparator(op)));
            }
            b'-' if !matches!(tokens.last(), Some((_, Token::Comparator(_)))) => {
                tokens.push((start, Token::Minus));
                i += 1;
            }
            _ if c == b'-' || c == b'*' || c == b'_' || c == b'.' || c == b'+' || c.is_ascii_alphanumeric() => {
                i += 1;
                // A word may hold slashes: a resource name as a map key
                // (`parties_status.parties/ind`) or a value.
                while let Some(&b) = bytes.get(i) {
                    if b == b'-'
                        || b == b'*'
                        || b == b'_'
                        || b == b'.'
                        || b == b'+'
                        || b == b'/'
                        || b.is_ascii_alphanumeric()
                    {
                        i += 1;
                    } else {
                        break;
                    }
                }
                tokens.push((start, Token::Word(text[start..i].to_string())));
            }
            _ => {
                let ch = text[i..].chars().next().expect("in bounds");
                return error(start, format!("unexpected character {ch:?}"));
            }
        }
    }
    Ok(tokens)
}

/// The parsed filter, before it meets a descriptor.
#[derive(Clone, Debug, PartialEq)]
enum Ast {
    And(Vec<Ast>),
    Or(Vec<Ast>),
    Not(Box<Ast>),
    Restriction { path: String, path_at: usize, op: Op, value: Literal, value_at: usize },
}

#[derive(Clone, Debug, PartialEq)]
enum Literal {
    Quoted(String),
    Word(String),
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map(|(p, _)| *p).unwrap_or(self.end)
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w == word)
    }

    fn expression(&mut self, depth: usize) -> Result<Ast, FilterError> {
        if depth > MAX_DEPTH {
            return error(self.position(), format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let mut parts = vec![self.sequence(depth)?];
        while self.is_word("AND") {
            self.next += 1;
            parts.push(self.sequence(depth)?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one") } else { Ast::And(parts) })
    }

    fn sequence(&mut self, depth: usize) -> Result<Ast, FilterError> {
        let mut parts = vec![self.factor(depth)?];
        while let Some(token) = self.peek() {
            if *token == Token::RParen || self.is_word("AND") {
                break;
            }
            parts.push(self.factor(depth)?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one") } else { Ast::And(parts) })
    }

    fn factor(&mut self, depth: usize) -> Result<Ast, FilterError> {
        let mut parts = vec![self.term(depth)?];
        while self.is_word("OR") {
            self.next += 1;
            parts.push(self.term(depth)?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one") } else { Ast::Or(parts) })
    }

    fn term(&mut self, depth: usize) -> Result<Ast, FilterError> {
        if self.is_word("NOT") || self.peek() == Some(&Token::Minus) {
            self.next += 1;
            return Ok(Ast::Not(Box::new(self.simple(depth + 1)?)));
        }
        self.simple(depth)
    }

    fn simple(&mut self, depth: usize) -> Result<Ast, FilterError> {
        let at = self.position();
        match self.tokens.get(self.next).cloned() {
            Some((_, Token::LParen)) => {
                self.next += 1;
                let inner = self.expression(depth + 1)?;
                if self.peek() != Some(&Token::RParen) {
                    return error(self.position(), format!("expected ')' to close the '(' at position {at}"));
                }
                self.next += 1;
                Ok(inner)
            }
            Some((_, Token::Word(word))) if !matches!(word.as_str(), "AND" | "OR" | "NOT") => {
                self.next += 1;
                let Some(Token::Comparator(op)) = self.peek().cloned() else {
                    return error(
                        self.position(),
                        format!(
                            "expected a comparator (=, !=, <, <=, >, >=, :) after {word:?}; a bare value is not a filter"
                        ),
                    );
                };
                self.next += 1;
                let value_at = self.position();
                let value = match self.tokens.get(self.next).cloned() {
                    Some((_, Token::Quoted(s))) => Literal::Quoted(s),
                    Some((_, Token::Word(w))) => Literal::Word(w),
                    _ => return error(value_at, format!("expected a value after '{}'", op.symbol())),
                };
                self.next += 1;
                Ok(Ast::Restriction { path: word, path_at: at, op, value, value_at })
            }
            Some((_, Token::RParen)) => error(at, "unexpected ')'"),
            Some((_, Token::Word(word))) => error(at, format!("expected a field or '(' before {word}")),
            Some(_) => error(at, "expected a field or '('"),
            None => error(at, "the filter ends where a field or '(' was expected"),
        }
    }
}

fn parse(text: &str) -> Result<Ast, FilterError> {
    if text.len() > MAX_FILTER_LENGTH {
        return error(
            MAX_FILTER_LENGTH,
            format!("the filter is {} characters long; at most {MAX_FILTER_LENGTH} are allowed", text.len()),
        );
    }
    let mut parser = Parser { tokens: lex(text)?, next: 0, end: text.len() };
    let ast = parser.expression(0)?;
    if parser.next < parser.tokens.len() {
        let message = if parser.peek() == Some(&Token::RParen) {
            "unexpected ')' with no '(' before it"
        } else {
            "unexpected text after the end of the filter"
        };
        return error(parser.position(), message);
    }
    Ok(ast)
}

/// One step of a field path.
#[derive(Clone, Debug)]
pub enum Step {
    Field(FieldDescriptor),
    /// A key of a map field (`labels.region`).
    MapKey(String),
}

/// A value of the type of the field it is compared with.
#[derive(Clone, Debug, PartialEq)]
pub enum Typed {
    Str(String),
    Int(i64),
    Bool(bool),
    Enum(i32),
    /// The first and last day of the period a date names.
    Date(i64, i64),
    /// The first and last nanosecond of the period a timestamp or date names.
    Time(i128, i128),
    /// `*`: the field is present.
    Present,
}

/// A filter checked against a resource's descriptor, ready to evaluate.
#[derive(Clone, Debug)]
pub enum Filter {
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Compare { path: Vec<Step>, op: Op, value: Typed },
}

impl Filter {
    /// Matches everything.
    pub fn everything() -> Filter {
        Filter::All(Vec::new())
    }

    /// Parses `text` and checks it against `descriptor`.
    pub fn compile(text: &str, descriptor: &MessageDescriptor) -> Result<Filter, FilterError> {
        if text.trim().is_empty() {
            return Ok(Filter::everything());
        }
        compile(&parse(text)?, descriptor)
    }

    /// Whether this is the empty filter, which every record matches.
    pub fn matches_everything(&self) -> bool {
        matches!(self, Filter::All(parts) if parts.is_empty())
    }

    pub fn matches(&self, record: &DynamicMessage) -> bool {
        match self {
            Filter::All(parts) => parts.iter().all(|p| p.matches(record)),
            Filter::Any(parts) => parts.iter().any(|p| p.matches(record)),
            Filter::Not(inner) => !inner.matches(record),
            Filter::Compare { path, op: Op::Ne, value } => !any_value(record, path, &|v| compare(v, Op::Eq, value)),
            Filter::Compare { path, op, value } => any_value(record, path, &|v| compare(v, *op, value)),
        }
    }

    /// The conditions every match must meet: the filter itself, or the parts of
    /// a top-level AND. The planner picks an index from these.
    pub fn conjuncts(&self) -> Vec<&Filter> {
        match self {
            Filter::All(parts) => parts.iter().flat_map(|p| p.conjuncts()).collect(),
            other => vec![other],
        }
    }
}

fn compile(ast: &Ast, descriptor: &MessageDescriptor) -> Result<Filter, FilterError> {
    Ok(match ast {
        Ast::And(parts) => Filter::All(parts.iter().map(|p| compile(p, descriptor)).collect::<Result<_, _>>()?),
        Ast::Or(parts) => Filter::Any(parts.iter().map(|p| compile(p, descriptor)).collect::<Result<_, _>>()?),
        Ast::Not(inner) => Filter::Not(Box::new(compile(inner, descriptor)?)),
        Ast::Restriction { path, path_at, op, value, value_at } => {
            let (steps, leaf) = resolve_path(descriptor, path, *path_at)?;
            let typed = typed_value(&leaf, *op, value, *value_at)?;
            // `:` on a repeated string is membership (exact), not a substring test.
            let membership = matches!(&leaf, Leaf::Field { field, repeated: true } if !field.is_map())
                && matches!(typed, Typed::Str(_));
            let op = if *op == Op::Has && membership { Op::Eq } else { *op };
            Filter::Compare { path: steps, op, value: typed }
        }
    })
}

/// What a path ends at: a field (and whether a repeated field was crossed), or
/// a map value.
#[derive(Clone, Debug)]
enum Leaf {
    Field { field: FieldDescriptor, repeated: bool },
    MapValue { value: FieldDescriptor },
}

/// Resolves a dotted path (snake_case or camelCase names) against a descriptor.
pub fn resolve_path_names(descriptor: &MessageDescriptor, path: &str) -> Result<(Vec<Step>, bool), String> {
    match resolve_path(descriptor, path, 0) {
        Ok((steps, Leaf::Field { repeated, .. })) => Ok((steps, repeated)),
        Ok((steps, Leaf::MapValue { .. })) => Ok((steps, false)),
        Err(e) => Err(e.message),
    }
}

fn resolve_path(descriptor: &MessageDescriptor, path: &str, at: usize) -> Result<(Vec<Step>, Leaf), FilterError> {
    let mut message = descriptor.clone();
    let mut steps = Vec::new();
    let mut repeated = false;
    let segments: Vec<&str> = path.split('.').collect();
    let mut offset = at;
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            return error(offset, format!("{path:?} has an empty segment"));
        }
        let field = message.get_field_by_name(segment).or_else(|| message.get_field_by_json_name(segment)).ok_or_else(
            || FilterError { position: offset, message: format!("{} has no field {segment:?}", message.full_name()) },
        )?;
        steps.push(Step::Field(field.clone()));
        let last = i + 1 == segments.len();
        if field.is_map() {
            let FieldKind::Message(entry) = field.kind() else { unreachable!("maps are messages") };
            let value = entry.map_entry_value_field();
            if last {
                return Ok((steps, Leaf::Field { field, repeated: true }));
            }
            let key = segments[i + 1..].join(".");
            steps.push(Step::MapKey(key));
            return Ok((steps, Leaf::MapValue { value }));
        }
        repeated |= field.is_list();
        if last {
            return Ok((steps, Leaf::Field { field, repeated }));
        }
        match field.kind() {
            FieldKind::Message(inner) if !is_scalar_message(&inner) => message = inner,
            _ => return error(offset + segment.len(), format!("{segment} has no fields to select with '.'")),
        }
        offset += segment.len() + 1;
    }
    unreachable!("a path has at least one segment")
}

/// Messages compared as values rather than traversed.
fn is_scalar_message(message: &MessageDescriptor) -> bool {
    matches!(message.full_name(), dates::DATE_MESSAGE | "google.protobuf.Timestamp")
}

fn typed_value(leaf: &Leaf, op: Op, value: &Literal, at: usize) -> Result<Typed, FilterError> {
    let text = match value {
        Literal::Quoted(s) | Literal::Word(s) => s.as_str(),
    };
    if matches!(value, Literal::Word(w) if w == "*") {
        return if op == Op::Has { Ok(Typed::Present) } else { error(at, "'*' is only allowed after ':' (field:*)") };
    }
    let (field, repeated) = match leaf {
        Leaf::Field { field, repeated } => (field.clone(), *repeated),
        Leaf::MapValue { value, .. } => (value.clone(), false),
    };
    if let Leaf::Field { field, .. } = leaf
        && field.is_map()
    {
        // `labels:key`: the map has the key.
        return if op == Op::Has {
            Ok(Typed::Str(text.to_string()))
        } else {
            error(at, format!("{} is a map: use {}:KEY, or {}.KEY = VALUE", field.name(), field.name(), field.name()))
        };
    }
    let ordered = matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge);
    let name = field.name().to_string();
    match field.kind() {
        FieldKind::String => {
            if repeated && ordered {
                return error(at, format!("{name} is repeated: use ':' to test membership"));
            }
            Ok(Typed::Str(text.to_string()))
        }
        FieldKind::Bool => match (text, ordered) {
            (_, true) => error(at, format!("{name} is a bool: only = and != apply")),
            ("true", _) => Ok(Typed::Bool(true)),
            ("false", _) => Ok(Typed::Bool(false)),
            _ => error(at, format!("{name} is a bool: expected true or false, got {text:?}")),
        },
        FieldKind::Int32
        | FieldKind::Int64
        | FieldKind::Sint32
        | FieldKind::Sint64
        | FieldKind::Uint32
        | FieldKind::Uint64 => text
            .parse::<i64>()
            .map(Typed::Int)
            .or_else(|_| error(at, format!("{name} is a number: {text:?} is not an integer"))),
        FieldKind::Enum(enum_type) => {
            if ordered {
                return error(at, format!("{name} is an enum: only =, != and : apply"));
            }
            let prefix = enum_type
                .values()
                .find(|v| v.number() == 0)
                .and_then(|v| v.name().strip_suffix("UNSPECIFIED").map(str::to_string))
                .unwrap_or_default();
            let found = enum_type
                .get_value_by_name(text)
                .or_else(|| enum_type.get_value_by_name(&format!("{prefix}{text}")))
                .map(|v| v.number())
                .or_else(|| text.parse::<i32>().ok().filter(|n| enum_type.get_value(*n).is_some()));
            match found {
                Some(n) => Ok(Typed::Enum(n)),
                None => {
                    let names: Vec<String> =
                        enum_type.values().map(|v| v.name().trim_start_matches(&prefix).to_string()).collect();
                    error(at, format!("{text:?} is not a value of {} ({})", enum_type.full_name(), names.join(", ")))
                }
            }
        }
        FieldKind::Message(m) if m.full_name() == dates::DATE_MESSAGE => {
            parse_date(text).map(|(first, last)| Typed::Date(first, last)).ok_or_else(|| FilterError {
                position: at,
                message: format!("{name} is a date: write \"YYYY\", \"YYYY-MM\" or \"YYYY-MM-DD\", not {text:?}"),
            })
        }
        FieldKind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
            parse_time(text).ok_or_else(|| FilterError {
                position: at,
                message: format!(
                    "{name} is a timestamp: write RFC 3339 (\"2020-09-10T00:00:00Z\") or a date, not {text:?}"
                ),
            })
        }
        FieldKind::Message(_) => {
            error(at, format!("{name} is a message: test its presence with {name}:* or select a field inside it"))
        }
        other => error(at, format!("{name} has type {other:?}, which filters do not support")),
    }
}

/// The first and last day of "YYYY", "YYYY-MM" or "YYYY-MM-DD".
fn parse_date(text: &str) -> Option<(i64, i64)> {
    let parts: Vec<&str> = text.split('-').collect();
    let number = |s: &str, len: usize| if s.len() == len { s.parse::<i32>().ok() } else { None };
    let date = match parts.as_slice() {
        [y] => crate::pb::google::r#type::Date { year: number(y, 4)?, month: 0, day: 0 },
        [y, m] => crate::pb::google::r#type::Date { year: number(y, 4)?, month: number(m, 2)?, day: 0 },
        [y, m, d] => crate::pb::google::r#type::Date { year: number(y, 4)?, month: number(m, 2)?, day: number(d, 2)? },
        _ => return None,
    };
    let mut violations = crate::error::Violations::new();
    dates::check(&date, "", &mut violations);
    violations.is_empty().then(|| (dates::first_day(&date), dates::last_day(&date)))
}

const NANOS_PER_DAY: i128 = 86_400 * 1_000_000_000;

/// The period of an RFC 3339 timestamp (one nanosecond) or of a date.
fn parse_time(text: &str) -> Option<Typed> {
    if let Some((first, last)) = parse_date(text) {
        return Some(Typed::Time(i128::from(first) * NANOS_PER_DAY, (i128::from(last) + 1) * NANOS_PER_DAY - 1));
    }
    let t: prost_types::Timestamp = text.parse().ok()?;
    let nanos = nanos_of(&t);
    Some(Typed::Time(nanos, nanos))
}

fn nanos_of(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

/// Whether `check` holds for any value at `path` (through repeated fields).
fn any_value(message: &DynamicMessage, path: &[Step], check: &dyn Fn(Option<&Value>) -> bool) -> bool {
    let Some((step, rest)) = path.split_first() else { return false };
    match step {
        Step::MapKey(_) => false,
        Step::Field(field) => {
            if field.is_map() {
                let value = message.get_field(field);
                let Some(map) = value.as_map() else { return false };
                return match rest.first() {
                    Some(Step::MapKey(key)) => check(map.get(&prost_reflect::MapKey::String(key.clone()))),
                    _ => map.keys().any(|k| check(Some(&Value::String(k.as_str().unwrap_or_default().to_string())))),
                };
            }
            let present = message.has_field(field);
            let value = message.get_field(field);
            if rest.is_empty() {
                return match &*value {
                    Value::List(items) => items.iter().any(|v| check(Some(v))),
                    single if present || !matches!(single, Value::Message(_)) => check(Some(single)),
                    _ => check(None),
                };
            }
            match &*value {
                Value::List(items) => items.iter().any(|v| v.as_message().is_some_and(|m| any_value(m, rest, check))),
                Value::Message(inner) if present => any_value(inner, rest, check),
                _ => false,
            }
        }
    }
}

fn compare(actual: Option<&Value>, op: Op, expected: &Typed) -> bool {
    let Some(actual) = actual else { return false };
    if *expected == Typed::Present {
        return match actual {
            Value::Message(_) => true,
            Value::String(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            _ => true,
        };
    }
    let ordering = match (actual, expected) {
        (Value::String(a), Typed::Str(e)) => {
            if op == Op::Has {
                return crate::registry::words::contains(a, e);
            }
            if op == Op::Eq {
                return wildcard_equals(a, e);
            }
            a.as_str().cmp(e.as_str())
        }
        (Value::Bool(a), Typed::Bool(e)) => a.cmp(e),
        (Value::EnumNumber(a), Typed::Enum(e)) => a.cmp(e),
        (Value::I32(a), Typed::Int(e)) => i64::from(*a).cmp(e),
        (Value::I64(a), Typed::Int(e)) => a.cmp(e),
        (Value::U32(a), Typed::Int(e)) => i64::from(*a).cmp(e),
        (Value::U64(a), Typed::Int(e)) => i128::from(*a).cmp(&i128::from(*e)),
        (Value::Message(m), Typed::Date(first, last)) => {
            let Some(date) = dates::from_dynamic(m) else { return false };
            return period_compare(
                dates::first_day(&date).into(),
                dates::last_day(&date).into(),
                op,
                (*first).into(),
                (*last).into(),
            );
        }
        (Value::Message(m), Typed::Time(first, last)) => {
            let Ok(t) = m.transcode_to::<prost_types::Timestamp>() else { return false };
            let n = nanos_of(&t);
            return period_compare(n, n, op, *first, *last);
        }
        _ => return false,
    };
    match op {
        Op::Eq | Op::Has => ordering.is_eq(),
        Op::Ne => ordering.is_ne(),
        Op::Lt => ordering.is_lt(),
        Op::Le => ordering.is_le(),
        Op::Gt => ordering.is_gt(),
        Op::Ge => ordering.is_ge(),
    }
}

/// A record's period [a0, a1] against a value's period [v0, v1]: true when the
/// comparison holds for every instant the record's period may stand for.
fn period_compare(a0: i128, a1: i128, op: Op, v0: i128, v1: i128) -> bool {
    match op {
        Op::Eq | Op::Has => v0 <= a0 && a1 <= v1,
        Op::Ne => !(v0 <= a0 && a1 <= v1),
        Op::Lt => a1 < v0,
        Op::Le => a1 <= v1,
        Op::Gt => a0 > v1,
        Op::Ge => a0 >= v0,
    }
}

/// `=` on strings, where a leading or trailing `*` in the value matches any
/// suffix or prefix (AIP-160 wildcards).
fn wildcard_equals(actual: &str, pattern: &str) -> bool {
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        _ if pattern == "*" => true,
        (Some(rest), _) if rest.ends_with('*') => actual.contains(&rest[..rest.len() - 1]),
        (Some(suffix), _) => actual.ends_with(suffix),
        (None, Some(prefix)) => actual.starts_with(prefix),
        (None, None) => actual == pattern,
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::ReflectMessage;

    use super::*;
    use crate::pb::cooperation::v1::{Agreement, agreement};
    use crate::pb::google::r#type::Date;

    fn sample() -> Agreement {
        let mut a = Agreement {
            name: "agreements/rpss".into(),
            title: "Reciprocal Provision of Supplies and Services".into(),
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            signature_date: Some(Date { year: 2020, month: 9, day: 10 }),
            entry_into_force_date: Some(Date { year: 2011, month: 8, day: 0 }),
            term: Some(agreement::Term { years: 10, ..Default::default() }),
            provisions: vec![
                agreement::Provision {
                    category: agreement::ProvisionCategory::BasingAccess as i32,
                    reciprocal: true,
                    ..Default::default()
                },
                agreement::Provision { category: agreement::ProvisionCategory::Medical as i32, ..Default::default() },
            ],
            status: agreement::Status::InForce as i32,
            create_time: Some(prost_types::Timestamp { seconds: 1_600_000_000, nanos: 0 }),
            ..Default::default()
        };
        a.labels.insert("region".into(), "indo-pacific".into());
        a
    }

    fn check(filter: &str) -> bool {
        let record = sample().transcode_to_dynamic();
        Filter::compile(filter, &record.descriptor()).unwrap_or_else(|e| panic!("{filter}: {e}")).matches(&record)
    }

    fn fails(filter: &str) -> FilterError {
        Filter::compile(filter, &Agreement::default().descriptor()).err().unwrap_or_else(|| panic!("{filter} compiled"))
    }

    #[test]
    fn every_operator() {
        assert!(check(r#"title = "Reciprocal Provision of Supplies and Services""#));
        assert!(check(r#"title != "Other""#));
        assert!(check(r#"title < "S" AND title <= "Reciprocal Provision of Supplies and Services""#));
        assert!(check(r#"title > "A" AND title >= "R""#));
        assert!(check(r#"title:"supplies""#), "':' on a string is a case-insensitive substring test");
        assert!(check(r#"title = "Reciprocal*" AND title = "*Services""#));
        assert!(check("term.years = 10 AND term.years >= 10 AND term.years < 11 AND term.months = 0"));
        assert!(!check("term.years > 10"));
    }

    #[test]
    fn boolean_structure_and_precedence() {
        assert!(check(r#"parties:"parties/jpn" AND parties:"parties/ind""#));
        assert!(check(r#"parties:"parties/jpn" parties:"parties/ind""#), "juxtaposition is AND");
        assert!(check(r#"parties:"parties/usa" OR parties:"parties/jpn""#));
        assert!(!check(r#"NOT parties:"parties/jpn""#));
        assert!(!check(r#"-parties:"parties/jpn""#));
        assert!(check(r#"-parties:"parties/usa""#));
        // OR binds tighter than AND: a AND (b OR c).
        assert!(check(r#"term.years = 10 AND parties:"parties/usa" OR parties:"parties/ind""#));
        assert!(!check(r#"(term.years = 10 AND parties:"parties/usa") OR parties:"parties/fra""#));
        assert!(check(r#"NOT (NOT (parties:"parties/jpn"))"#));
    }

    #[test]
    fn nested_repeated_enums_maps_and_presence() {
        assert!(check("provisions.category = BASING_ACCESS"));
        assert!(check("provisions.category = PROVISION_CATEGORY_MEDICAL"));
        assert!(!check("provisions.category = TRAINING"));
        assert!(check("provisions.category != TRAINING"));
        assert!(!check("provisions.category != MEDICAL"), "!= is the negation of =");
        assert!(check("provisions.reciprocal = true"));
        assert!(check("status = IN_FORCE AND status != SIGNED"));
        assert!(check(r#"labels.region = "indo-pacific" AND labels:region AND -labels:other"#));
        assert!(!check(r#"parties:"parties/jp""#), "membership is exact, not a substring");
        assert!(check("term:* AND signature_date:* AND -end:*"));
    }

    #[test]
    fn dates_compare_by_the_period_they_name() {
        // signature 2020-09-10
        assert!(check(r#"signature_date = "2020-09-10" AND signature_date = "2020-09" AND signature_date = "2020""#));
        assert!(check(r#"signature_date >= "2020-01-01" AND signature_date > "2019" AND signature_date < "2021""#));
        assert!(check(r#"signature_date <= "2020-09-10" AND signature_date <= "2020""#));
        assert!(!check(r#"signature_date > "2020""#));
        // entry into force "2011-08": a month
        assert!(check(r#"entry_into_force_date = "2011" AND entry_into_force_date = "2011-08""#));
        assert!(!check(r#"entry_into_force_date = "2011-08-15""#), "a month is not known to be a given day");
        assert!(!check(r#"entry_into_force_date >= "2011-08-15""#));
        assert!(check(r#"entry_into_force_date >= "2011-08-01" AND entry_into_force_date <= "2011-08-31""#));
        assert!(!check(r#"end.date < "2030""#), "unset dates match nothing");
        assert!(check(
            r#"create_time > "2020-09-13T12:00:00Z" AND create_time < "2020-09-14" AND create_time = "2020-09-13""#
        ));
    }

    #[test]
    fn errors_name_the_position_and_the_problem() {
        let e = fails(r#"parties:"parties/jpn" AND nope = 1"#);
        assert_eq!(e.position, 26);
        assert!(e.message.contains("no field \"nope\""), "{e}");
        let e = fails("term.years = ten");
        assert_eq!(e.position, 13);
        assert!(e.message.contains("not an integer"), "{e}");
        let e = fails("provisions.category = BASES");
        assert!(e.message.contains("BASING_ACCESS"), "lists the values: {e}");
        assert_eq!(fails("(title = \"a\"").position, 12);
        assert!(fails("title").message.contains("bare value"));
        assert!(fails("title = ").message.contains("expected a value"));
        assert!(fails(r#"signature_date > "10 Sept""#).message.contains("YYYY"));
        assert!(fails(r#"signature_date > "2020-13""#).message.contains("YYYY"));
        assert!(fails("status < IN_FORCE").message.contains("enum"));
        assert!(fails("term = 3").message.contains("message"));
        assert!(fails("title.x = 1").message.contains("no fields"));
        assert!(fails("parties > \"a\"").message.contains("repeated"));
        assert!(fails("title = \"unterminated").message.contains("unterminated"));
        assert!(fails("title = a )").message.contains("')'"));
        assert!(fails(&"(".repeat(40)).message.contains("deeper"));
        assert!(fails(&"a".repeat(3000)).message.contains("2048"));
    }
}

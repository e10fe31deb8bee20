//! Kriti, the JSON templating language of Hasura's request and response
//! transforms: parsed once (when a definition is created), evaluated per
//! event against `$body`, `$base_url` and the other bindings.
//!
//! The grammar is kriti-lang's (hasura/kriti-lang, `grammar.bnf`): a
//! template is one expression; JSON values are expressions; `{{ e }}`
//! wraps an expression; `{{ if c }} a {{ elif d }} b {{ else }} c {{ end }}`
//! (an `else` is required) and `{{ range i, x := xs }} e {{ end }}` (whose
//! value is an array) are expressions too; strings interpolate
//! `{{ e }}` (strings as they are, other values as JSON); paths take
//! `.field`, `['field']` and `[expr]`; `?` makes the rest of a path
//! optional (a missing step gives `null`); `??` replaces `null`. Where
//! kriti-lang rejects a form that has one obvious meaning, this parser
//! accepts it: operators chain with the usual precedence (`||` below `&&`
//! below comparisons below `??`), and a function call may be an operand or
//! have a path after it. Nothing kriti-lang accepts means anything else
//! here. Evaluation follows kriti-lang's: both sides of `&&` and `||` are
//! evaluated, comparisons order values of different types as aeson does
//! (object < array < string < number < boolean < null).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Number, Value};

/// A syntax or evaluation error, with the position in the template
/// (1-based line and column, in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at line {}, column {}", self.message, self.line, self.column)
    }
}

impl std::error::Error for Error {}

/// The functions a template may call: kriti-lang's basic library, and
/// Hasura's `getSessionVariable` where session variables are bound.
pub const FUNCTIONS: &[&str] = &[
    "empty",
    "size",
    "inverse",
    "head",
    "tail",
    "toCaseFold",
    "toLower",
    "toUpper",
    "toTitle",
    "escapeUri",
    "fromPairs",
    "toPairs",
    "removeNulls",
    "concat",
    "not",
    "getSessionVariable",
];

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    root: Expr,
}

/// What a template is evaluated against: named values (`$body`, ...) and
/// the session variables `getSessionVariable` reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bindings<'a> {
    pub values: &'a [(&'a str, &'a Value)],
    pub session_variables: Option<&'a Value>,
}

impl Template {
    /// Parses `source`; a syntax error names its position.
    pub fn parse(source: &str) -> Result<Template, Error> {
        let tokens = lex(source).map_err(|(at, message)| error_at(source, at, message))?;
        let mut p = Parser { tokens, at: 0, depth: 0 };
        let root = p.expr().and_then(|e| match p.peek() {
            Tok::Eof => Ok(e),
            t => Err((p.pos(), format!("unexpected {} after the end of the template", t.describe()))),
        });
        let root = root.map_err(|(at, message)| error_at(source, at, message))?;
        Ok(Template { source: source.to_owned(), root })
    }

    /// Parses a template that is the inside of a string (Hasura's
    /// "unescaped" templates: URLs, header values, query parameters, form
    /// fields): `https://x/{{$body.id}}` is evaluated as the string
    /// literal `"https://x/{{$body.id}}"`. Positions refer to `source`.
    pub fn parse_string(source: &str) -> Result<Template, Error> {
        let wrapped = format!("\"{source}\"");
        match Template::parse(&wrapped) {
            Ok(t) => Ok(t),
            Err(mut e) => {
                // The opening quote shifted the first line by one.
                if e.line == 1 && e.column > 1 {
                    e.column -= 1;
                }
                Err(e)
            }
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the template.
    pub fn eval(&self, bindings: Bindings<'_>) -> Result<Value, Error> {
        let scope = Scope { parent: None, name: "", value: &Value::Null, bindings };
        eval(&self.root, &scope).map(Cow::into_owned).map_err(|(at, message)| error_at(&self.source, at, message))
    }
}

fn error_at(source: &str, at: usize, message: String) -> Error {
    let before = &source[..at.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Error { message, line, column }
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// `'...'`, only meaningful as `['key']`.
    Quoted(String),
    StrBegin,
    StrText(String),
    StrEnd,
    Open2,
    Close2,
    Sym(&'static str),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::Bool(b) => format!("'{b}'"),
            Tok::Quoted(s) => format!("'{s}' (single quotes)"),
            Tok::StrBegin => "a string".into(),
            Tok::StrText(_) => "string text".into(),
            Tok::StrEnd => "the end of a string".into(),
            Tok::Open2 => "'{{'".into(),
            Tok::Close2 => "'}}'".into(),
            Tok::Sym(s) => format!("'{s}'"),
            Tok::Eof => "the end of the template".into(),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Top,
    Expr,
    Str,
}

/// Symbols, longest first so that `??` wins over `?`.
const SYMBOLS: &[&str] =
    &[":=", "??", "==", "!=", ">=", "<=", "&&", "||", ":", ".", ",", "?", ">", "<", "_", "{", "}", "[", "]", "(", ")"];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, (usize, String)> {
    let b = src.as_bytes();
    let mut out: Vec<(Tok, usize)> = Vec::new();
    let mut modes = vec![Mode::Top];
    let mut i = 0;
    while i < b.len() {
        let mode = *modes.last().expect("the mode stack keeps its bottom");
        if mode == Mode::Str {
            match b[i] {
                b'"' => {
                    out.push((Tok::StrEnd, i));
                    modes.pop();
                    i += 1;
                }
                b'{' if b.get(i + 1) == Some(&b'{') => {
                    out.push((Tok::Open2, i));
                    modes.push(Mode::Expr);
                    i += 2;
                }
                b'\\' => {
                    let (s, n) = unescape(src, i)?;
                    push_text(&mut out, s, i);
                    i += n;
                }
                _ => {
                    let start = i;
                    // One character at least (a lone '{' is text), then up
                    // to the next quote, brace or backslash.
                    i += src[i..].chars().next().map_or(1, char::len_utf8);
                    while i < b.len() && !matches!(b[i], b'"' | b'{' | b'\\') {
                        i += 1;
                    }
                    push_text(&mut out, src[start..i].to_owned(), start);
                }
            }
            continue;
        }
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'"' {
            out.push((Tok::StrBegin, i));
            modes.push(Mode::Str);
            i += 1;
        } else if c == b'{' && b.get(i + 1) == Some(&b'{') {
            out.push((Tok::Open2, i));
            modes.push(Mode::Expr);
            i += 2;
        } else if c == b'}' && b.get(i + 1) == Some(&b'}') && mode == Mode::Expr {
            out.push((Tok::Close2, i));
            modes.pop();
            i += 2;
        } else if c == b'\'' {
            let start = i;
            let end = src[i + 1..].find('\'').ok_or((start, "a single-quoted key is not closed".to_owned()))?;
            out.push((Tok::Quoted(src[i + 1..i + 1 + end].to_owned()), start));
            i += end + 2;
        } else if c.is_ascii_digit() || (c == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let (t, n) = number(&src[i..]).map_err(|m| (i, m))?;
            out.push((t, i));
            i += n;
        } else if c == b'$' || c.is_ascii_alphabetic() {
            let start = i;
            i += 1;
            if c == b'$' && b.get(i).is_some_and(u8::is_ascii_alphabetic) {
                i += 1;
            }
            if c != b'$' || i > start + 1 {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'$' | b'_' | b'-')) {
                    i += 1;
                }
            }
            let word = &src[start..i];
            let tok = match word {
                "true" => Tok::Bool(true),
                "false" => Tok::Bool(false),
                _ => Tok::Ident(word.to_owned()),
            };
            out.push((tok, start));
        } else if let Some(s) = SYMBOLS.iter().find(|s| src[i..].starts_with(**s)) {
            out.push((Tok::Sym(s), i));
            i += s.len();
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err((i, format!("unexpected character '{ch}'")));
        }
    }
    match modes.last() {
        Some(Mode::Str) => Err((src.len(), "a string is not closed (missing '\"')".into())),
        Some(Mode::Expr) => Err((src.len(), "'{{' is not closed (missing '}}')".into())),
        _ => {
            out.push((Tok::Eof, src.len()));
            Ok(out)
        }
    }
}

fn push_text(out: &mut Vec<(Tok, usize)>, s: String, at: usize) {
    if let Some((Tok::StrText(prev), _)) = out.last_mut() {
        prev.push_str(&s);
    } else {
        out.push((Tok::StrText(s), at));
    }
}

/// A backslash escape in a string: JSON's, and `\{` for a literal brace.
fn unescape(src: &str, i: usize) -> Result<(String, usize), (usize, String)> {
    let rest = &src[i + 1..];
    let c = rest.chars().next().ok_or((i, "a string ends in a lone backslash".to_owned()))?;
    let s = match c {
        '"' => "\"",
        '\\' => "\\",
        '/' => "/",
        '{' => "{",
        'b' => "\u{8}",
        'f' => "\u{c}",
        'n' => "\n",
        'r' => "\r",
        't' => "\t",
        'u' => {
            let hex = rest.get(1..5).filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
            let code = hex.and_then(|h| u32::from_str_radix(h, 16).ok());
            let ch = code.and_then(char::from_u32).ok_or((i, "\\u needs four hex digits of a character".to_owned()))?;
            return Ok((ch.to_string(), 6));
        }
        other => return Err((i, format!("unknown escape '\\{other}' in a string"))),
    };
    Ok((s.to_owned(), 2))
}

fn number(s: &str) -> Result<(Tok, usize), String> {
    let b = s.as_bytes();
    let mut n = usize::from(b[0] == b'-');
    while n < b.len() && b[n].is_ascii_digit() {
        n += 1;
    }
    let int_end = n;
    if n + 1 < b.len() && b[n] == b'.' && b[n + 1].is_ascii_digit() {
        n += 1;
        while n < b.len() && b[n].is_ascii_digit() {
            n += 1;
        }
    }
    if n < b.len() && matches!(b[n], b'e' | b'E') {
        let mut m = n + 1;
        if m < b.len() && matches!(b[m], b'+' | b'-') {
            m += 1;
        }
        if m < b.len() && b[m].is_ascii_digit() {
            while m < b.len() && b[m].is_ascii_digit() {
                m += 1;
            }
            n = m;
        }
    }
    let text = &s[..n];
    if n == int_end {
        if let Ok(i) = text.parse::<i64>() {
            return Ok((Tok::Int(i), n));
        }
    }
    text.parse::<f64>().map(|f| (Tok::Float(f), n)).map_err(|_| format!("'{text}' is not a number"))
}

// ---------------------------------------------------------------- parser

#[derive(Debug, Clone)]
struct Expr {
    at: usize,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Lit(Value),
    Str(Vec<Expr>),
    Array(Vec<Expr>),
    Object(Vec<(String, Expr)>),
    Var(String),
    Field(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Optional(Box<Expr>, Vec<Step>),
    Binary(Op, Box<Expr>, Box<Expr>),
    Call(String, Box<Expr>),
    If(Vec<(Expr, Expr)>, Box<Expr>),
    Range { index: Option<String>, item: String, over: Box<Expr>, body: Box<Expr> },
}

#[derive(Debug, Clone)]
enum Step {
    Field(String),
    Index(Expr),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    In,
    Default,
}

type PResult<T> = Result<T, (usize, String)>;

struct Parser {
    tokens: Vec<(Tok, usize)>,
    at: usize,
    /// Expressions open around the one being parsed.
    depth: usize,
}

/// How deeply expressions may nest. Parsing and evaluation recurse, and a
/// template of 64 kB could otherwise nest deep enough to overflow the
/// stack of the backend (or worker) that parses it.
pub const MAX_DEPTH: usize = 64;

const KEYWORDS: &[&str] = &["if", "elif", "else", "end", "range", "in", "not", "null"];

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.at].0
    }
    fn pos(&self) -> usize {
        self.tokens[self.at].1
    }
    fn next(&mut self) -> Tok {
        let t = self.tokens[self.at].0.clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        t
    }
    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Sym(x) if *x == s)
    }
    fn is_ident(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Ident(x) if x == s)
    }
    fn expect_sym(&mut self, s: &str, what: &str) -> PResult<()> {
        if self.is_sym(s) {
            self.next();
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{s}' {what}")))
        }
    }
    fn expect_close(&mut self, what: &str) -> PResult<()> {
        if *self.peek() == Tok::Close2 {
            self.next();
            Ok(())
        } else {
            Err(self.unexpected(&format!("'}}}}' {what}")))
        }
    }
    fn expect_keyword(&mut self, k: &str, what: &str) -> PResult<()> {
        if self.is_ident(k) {
            self.next();
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{k}' {what}")))
        }
    }
    fn unexpected(&self, wanted: &str) -> (usize, String) {
        (self.pos(), format!("expected {wanted}, found {}", self.peek().describe()))
    }

    fn expr(&mut self) -> PResult<Expr> {
        self.deeper()?;
        let e = self.binary(0);
        self.depth -= 1;
        e
    }

    /// One level more of nesting (an expression, an operator or a path
    /// step around the rest), within [`MAX_DEPTH`]. An error ends the
    /// parse, so only success restores the count.
    fn deeper(&mut self) -> PResult<()> {
        if self.depth >= MAX_DEPTH {
            return Err((self.pos(), format!("the template nests more than {MAX_DEPTH} expressions deep")));
        }
        self.depth += 1;
        Ok(())
    }

    /// Precedence levels, lowest first.
    fn binary(&mut self, level: usize) -> PResult<Expr> {
        const LEVELS: &[&[(&str, Op)]] = &[
            &[("||", Op::Or)],
            &[("&&", Op::And)],
            &[
                ("==", Op::Eq),
                ("!=", Op::Ne),
                ("<=", Op::Le),
                (">=", Op::Ge),
                ("<", Op::Lt),
                (">", Op::Gt),
                ("in", Op::In),
            ],
            &[("??", Op::Default)],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut lhs = self.binary(level + 1)?;
        let mut chained = 0;
        loop {
            let op = LEVELS[level].iter().find(|(s, _)| if *s == "in" { self.is_ident("in") } else { self.is_sym(s) });
            let Some(&(_, op)) = op else {
                self.depth -= chained;
                return Ok(lhs);
            };
            self.deeper()?;
            chained += 1;
            let at = self.pos();
            self.next();
            let rhs = self.binary(level + 1)?;
            lhs = Expr { at: lhs.at.min(at), kind: Kind::Binary(op, Box::new(lhs), Box::new(rhs)) };
        }
    }

    fn unary(&mut self) -> PResult<Expr> {
        // kriti-lang: `not e` negates the whole expression after it.
        if self.is_ident("not") {
            let at = self.pos();
            self.next();
            let e = self.expr()?;
            return Ok(Expr { at, kind: Kind::Call("not".into(), Box::new(e)) });
        }
        let base = self.primary()?;
        self.postfix(base)
    }

    fn postfix(&mut self, mut e: Expr) -> PResult<Expr> {
        let mut nested = 0;
        loop {
            if self.is_sym(".") || self.is_sym("[") || self.is_sym("?") {
                self.deeper()?;
                nested += 1;
            }
            if self.is_sym(".") {
                self.next();
                let name = self.field_name()?;
                e = Expr { at: e.at, kind: Kind::Field(Box::new(e), name) };
            } else if self.is_sym("[") {
                match self.bracket()? {
                    Step::Field(name) => e = Expr { at: e.at, kind: Kind::Field(Box::new(e), name) },
                    Step::Index(i) => e = Expr { at: e.at, kind: Kind::Index(Box::new(e), Box::new(i)) },
                }
            } else if self.is_sym("?") {
                self.next();
                let mut steps = Vec::new();
                loop {
                    if self.is_sym(".") {
                        self.next();
                        steps.push(Step::Field(self.field_name()?));
                    } else if self.is_sym("[") {
                        steps.push(self.bracket()?);
                    } else {
                        break;
                    }
                }
                e = Expr { at: e.at, kind: Kind::Optional(Box::new(e), steps) };
            } else {
                self.depth -= nested;
                return Ok(e);
            }
        }
    }

    fn field_name(&mut self) -> PResult<String> {
        match self.peek().clone() {
            Tok::Ident(name) => {
                self.next();
                Ok(name)
            }
            _ => Err(self.unexpected("a field name after '.'")),
        }
    }

    /// `['key']` or `[expr]`, the '[' not yet taken.
    fn bracket(&mut self) -> PResult<Step> {
        self.next();
        let step = if let Tok::Quoted(key) = self.peek().clone() {
            self.next();
            Step::Field(key)
        } else {
            Step::Index(self.expr()?)
        };
        self.expect_sym("]", "to close '['")?;
        Ok(step)
    }

    fn primary(&mut self) -> PResult<Expr> {
        let at = self.pos();
        let lit = |v: Value| Ok(Expr { at, kind: Kind::Lit(v) });
        match self.next() {
            Tok::Int(i) => lit(Value::from(i)),
            Tok::Float(f) => lit(Number::from_f64(f).map_or(Value::Null, Value::Number)),
            Tok::Bool(b) => lit(Value::Bool(b)),
            Tok::Ident(name) if name == "null" => lit(Value::Null),
            Tok::Ident(name) if *self.peek() == Tok::Sym("(") && !KEYWORDS.contains(&name.as_str()) => {
                if !FUNCTIONS.contains(&name.as_str()) {
                    return Err((at, format!("unknown function '{name}' (known: {})", FUNCTIONS.join(", "))));
                }
                self.next();
                let arg = self.expr()?;
                self.expect_sym(")", &format!("to close the call of {name}"))?;
                Ok(Expr { at, kind: Kind::Call(name, Box::new(arg)) })
            }
            Tok::Ident(name) if KEYWORDS.contains(&name.as_str()) => {
                Err((at, format!("'{name}' cannot start an expression here")))
            }
            Tok::Ident(name) => Ok(Expr { at, kind: Kind::Var(name) }),
            Tok::Sym("(") => {
                let e = self.expr()?;
                self.expect_sym(")", "to close '('")?;
                Ok(e)
            }
            Tok::Sym("[") => {
                let mut items = Vec::new();
                if !self.is_sym("]") {
                    loop {
                        items.push(self.expr()?);
                        if !self.is_sym(",") {
                            break;
                        }
                        self.next();
                    }
                }
                self.expect_sym("]", "or ',' in an array")?;
                Ok(Expr { at, kind: Kind::Array(items) })
            }
            Tok::Sym("{") => {
                let mut fields = Vec::new();
                if !self.is_sym("}") {
                    loop {
                        let key = self.object_key()?;
                        self.expect_sym(":", "after an object key")?;
                        fields.push((key, self.expr()?));
                        if !self.is_sym(",") {
                            break;
                        }
                        self.next();
                    }
                }
                self.expect_sym("}", "or ',' in an object")?;
                Ok(Expr { at, kind: Kind::Object(fields) })
            }
            Tok::StrBegin => {
                let mut parts = Vec::new();
                loop {
                    let part_at = self.pos();
                    match self.next() {
                        Tok::StrEnd => break,
                        Tok::StrText(s) => parts.push(Expr { at: part_at, kind: Kind::Lit(Value::String(s)) }),
                        Tok::Open2 => {
                            parts.push(self.expr()?);
                            self.expect_close("to close '{{' in a string")?;
                        }
                        t => return Err((part_at, format!("unexpected {} in a string", t.describe()))),
                    }
                }
                Ok(Expr { at, kind: Kind::Str(parts) })
            }
            Tok::Open2 => {
                if self.is_ident("if") {
                    self.next();
                    self.if_rest(at)
                } else if self.is_ident("range") {
                    self.next();
                    self.range_rest(at)
                } else {
                    let e = self.expr()?;
                    self.expect_close("to close '{{'")?;
                    Ok(e)
                }
            }
            t => Err((at, format!("expected a value, found {}", t.describe()))),
        }
    }

    fn object_key(&mut self) -> PResult<String> {
        if *self.peek() != Tok::StrBegin {
            return Err(self.unexpected("a quoted object key"));
        }
        self.next();
        let mut key = String::new();
        loop {
            let at = self.pos();
            match self.next() {
                Tok::StrEnd => return Ok(key),
                Tok::StrText(s) => key.push_str(&s),
                _ => return Err((at, "object keys cannot contain '{{ }}'".into())),
            }
        }
    }

    /// `{{ end }}` after the body of `branch`, closing `block`.
    fn expect_end(&mut self, branch: &str, block: &str) -> PResult<()> {
        if *self.peek() != Tok::Open2 {
            return Err(self.unexpected(&format!("'{{{{ end }}}}' after the body of '{branch}'")));
        }
        self.next();
        self.expect_keyword("end", &format!("to close '{block}'"))?;
        self.expect_close("after 'end'")
    }

    /// After `{{ if`.
    fn if_rest(&mut self, at: usize) -> PResult<Expr> {
        let mut arms = Vec::new();
        let cond = self.expr()?;
        self.expect_close("after the condition of 'if'")?;
        arms.push((cond, self.expr()?));
        loop {
            if *self.peek() != Tok::Open2 {
                return Err(self.unexpected("'{{ elif ... }}' or '{{ else }}' after the body of 'if'"));
            }
            self.next();
            if self.is_ident("elif") {
                self.next();
                let cond = self.expr()?;
                self.expect_close("after the condition of 'elif'")?;
                arms.push((cond, self.expr()?));
            } else if self.is_ident("else") {
                self.next();
                self.expect_close("after 'else'")?;
                let otherwise = self.expr()?;
                self.expect_end("else", "if")?;
                return Ok(Expr { at, kind: Kind::If(arms, Box::new(otherwise)) });
            } else if self.is_ident("end") {
                return Err((self.pos(), "'if' needs an '{{ else }}' branch before '{{ end }}'".into()));
            } else {
                return Err(self.unexpected("'elif' or 'else'"));
            }
        }
    }

    /// After `{{ range`.
    fn range_rest(&mut self, at: usize) -> PResult<Expr> {
        let index = match self.next() {
            Tok::Sym("_") => None,
            Tok::Ident(i) if !KEYWORDS.contains(&i.as_str()) => Some(i),
            _ => return Err((self.tokens[self.at - 1].1, "expected an index name or '_' after 'range'".into())),
        };
        self.expect_sym(",", "after the index of 'range'")?;
        let item = match self.next() {
            Tok::Ident(i) if !KEYWORDS.contains(&i.as_str()) => i,
            _ => return Err((self.tokens[self.at - 1].1, "expected an item name in 'range'".into())),
        };
        self.expect_sym(":=", "in 'range i, x := ...'")?;
        let over = self.expr()?;
        self.expect_close("after the array of 'range'")?;
        let body = self.expr()?;
        self.expect_end("range", "range")?;
        Ok(Expr { at, kind: Kind::Range { index, item, over: Box::new(over), body: Box::new(body) } })
    }
}

// ---------------------------------------------------------------- evaluation

struct Scope<'s> {
    parent: Option<&'s Scope<'s>>,
    name: &'s str,
    value: &'s Value,
    bindings: Bindings<'s>,
}

impl<'s> Scope<'s> {
    fn lookup(&self, name: &str) -> Option<&'s Value> {
        let mut s = Some(self);
        while let Some(scope) = s {
            if scope.parent.is_some() && scope.name == name {
                return Some(scope.value);
            }
            if scope.parent.is_none() {
                return scope.bindings.values.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
            }
            s = scope.parent;
        }
        None
    }
}

type EResult<'s> = Result<Cow<'s, Value>, (usize, String)>;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Object(_) => "Object",
        Value::Array(_) => "Array",
        Value::String(_) => "String",
        Value::Number(_) => "Number",
        Value::Bool(_) => "Boolean",
        Value::Null => "Null",
    }
}

fn type_error(at: usize, expected: &str, v: &Value) -> (usize, String) {
    (at, format!("Couldn't match expected type '{expected}' with actual type '{}'", type_name(v)))
}

fn field<'s>(v: Cow<'s, Value>, key: &str) -> Option<Cow<'s, Value>> {
    match v {
        Cow::Borrowed(Value::Object(m)) => m.get(key).map(Cow::Borrowed),
        Cow::Owned(Value::Object(mut m)) => m.remove(key).map(Cow::Owned),
        _ => None,
    }
}

fn element<'s>(v: Cow<'s, Value>, i: usize) -> Option<Cow<'s, Value>> {
    match v {
        Cow::Borrowed(Value::Array(a)) => a.get(i).map(Cow::Borrowed),
        Cow::Owned(Value::Array(mut a)) if i < a.len() => Some(Cow::Owned(a.swap_remove(i))),
        _ => None,
    }
}

fn as_index(n: &Value) -> Option<usize> {
    n.as_u64()
        .and_then(|u| usize::try_from(u).ok())
        .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < usize::MAX as f64).map(|f| f as usize))
}

fn eval<'s>(e: &Expr, scope: &Scope<'s>) -> EResult<'s> {
    let owned = |v: Value| Ok(Cow::Owned(v));
    match &e.kind {
        Kind::Lit(v) => owned(v.clone()),
        Kind::Str(parts) => {
            let mut s = String::new();
            for p in parts {
                match eval(p, scope)?.as_ref() {
                    Value::String(t) => s.push_str(t),
                    v => s.push_str(&v.to_string()),
                }
            }
            owned(Value::String(s))
        }
        Kind::Array(items) => {
            owned(Value::Array(items.iter().map(|i| eval(i, scope).map(Cow::into_owned)).collect::<Result<_, _>>()?))
        }
        Kind::Object(fields) => {
            let mut m = Map::new();
            for (k, v) in fields {
                m.insert(k.clone(), eval(v, scope)?.into_owned());
            }
            owned(Value::Object(m))
        }
        Kind::Var(name) => {
            scope.lookup(name).map(Cow::Borrowed).ok_or((e.at, format!("Variable '{name}' not in scope")))
        }
        Kind::Field(base, key) => {
            let v = eval(base, scope)?;
            if !v.is_object() {
                return Err(type_error(base.at, "Object", &v));
            }
            field(v, key).ok_or((e.at, format!("'Object' has no attribute '{key}'")))
        }
        Kind::Index(base, index) => {
            let v = eval(base, scope)?;
            let i = eval(index, scope)?;
            match (v.as_ref(), i.as_ref()) {
                (Value::Object(_), Value::String(key)) => {
                    let key = key.clone();
                    field(v, &key).ok_or((e.at, format!("'Object' has no attribute '{key}'")))
                }
                (Value::Object(_), other) => Err(type_error(index.at, "String", other)),
                (Value::Array(_), n @ Value::Number(_)) => match as_index(n) {
                    Some(i) => element(v, i).ok_or((e.at, "Index out of range".into())),
                    None => Err(type_error(index.at, "Integer", n)),
                },
                (Value::Array(_), other) => Err(type_error(index.at, "Integer", other)),
                (other, _) => Err(type_error(base.at, "Object", other)),
            }
        }
        Kind::Optional(base, steps) => {
            let mut v = eval(base, scope).unwrap_or(Cow::Owned(Value::Null));
            if !matches!(v.as_ref(), Value::Object(_) | Value::Array(_) | Value::Null) {
                return Err(type_error(base.at, "Object", &v));
            }
            let mut keys = Vec::with_capacity(steps.len());
            for s in steps {
                keys.push(match s {
                    Step::Field(k) => Cow::Owned(Value::String(k.clone())),
                    Step::Index(i) => eval(i, scope)?,
                });
            }
            for k in &keys {
                let next = match k.as_ref() {
                    Value::String(key) => field(v, key),
                    n @ Value::Number(_) => as_index(n).and_then(|i| element(v, i)),
                    _ => None,
                };
                match next {
                    Some(n) => v = n,
                    None => return owned(Value::Null),
                }
            }
            Ok(v)
        }
        Kind::Binary(op, l, r) => binary(*op, e.at, l, r, scope),
        Kind::Call(name, arg) => {
            let v = eval(arg, scope)?;
            call(name, &v, scope.bindings.session_variables).map(Cow::Owned).map_err(|m| (arg.at, m))
        }
        Kind::If(arms, otherwise) => {
            for (cond, body) in arms {
                match eval(cond, scope)?.as_ref() {
                    Value::Bool(true) => return eval(body, scope),
                    Value::Bool(false) => {}
                    v => return Err(type_error(cond.at, "Boolean", v)),
                }
            }
            eval(otherwise, scope)
        }
        Kind::Range { index, item, over, body } => {
            let arr = eval(over, scope)?;
            let Value::Array(items) = arr.as_ref() else { return Err(type_error(over.at, "Array", &arr)) };
            let mut out = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                let n = Value::from(i);
                let with_item = Scope { parent: Some(scope), name: item, value: x, bindings: scope.bindings };
                let with_index;
                let inner = match index {
                    Some(ix) => {
                        with_index = Scope { parent: Some(&with_item), name: ix, value: &n, bindings: scope.bindings };
                        &with_index
                    }
                    None => &with_item,
                };
                out.push(eval(body, inner)?.into_owned());
            }
            owned(Value::Array(out))
        }
    }
}

fn binary<'s>(op: Op, at: usize, l: &Expr, r: &Expr, scope: &Scope<'s>) -> EResult<'s> {
    let a = eval(l, scope)?;
    if op == Op::Default {
        return if a.is_null() { eval(r, scope) } else { Ok(a) };
    }
    let b = eval(r, scope)?;
    let (a, b) = (a.as_ref(), b.as_ref());
    let v = match op {
        Op::Eq => equal(a, b),
        Op::Ne => !equal(a, b),
        Op::Lt => compare(a, b) == Ordering::Less,
        Op::Gt => compare(a, b) == Ordering::Greater,
        Op::Le => compare(a, b) != Ordering::Greater,
        Op::Ge => compare(a, b) != Ordering::Less,
        Op::And | Op::Or => match (a, b) {
            (Value::Bool(p), Value::Bool(q)) => {
                if op == Op::And {
                    *p && *q
                } else {
                    *p || *q
                }
            }
            (Value::Bool(_), other) | (other, _) => return Err(type_error(at, "Boolean", other)),
        },
        Op::In => match (a, b) {
            (Value::String(k), Value::Object(m)) => m.contains_key(k),
            (other, Value::Object(_)) => return Err(type_error(at, "String", other)),
            (_, Value::Array(xs)) => xs.iter().any(|x| equal(a, x)),
            (_, other) => return Err(type_error(at, "Array", other)),
        },
        Op::Default => unreachable!("handled above"),
    };
    Ok(Cow::Owned(Value::Bool(v)))
}

/// JSON equality with numbers compared by value (`1 == 1.0`), as
/// Scientific compares them.
pub fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

fn compare_numbers(x: &Number, y: &Number) -> Ordering {
    match (x.as_i64(), y.as_i64()) {
        (Some(p), Some(q)) => p.cmp(&q),
        _ => x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(Ordering::Equal),
    }
}

/// aeson's order on values: by kind first (object, array, string, number,
/// boolean, null), then by contents.
fn compare(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Object(_) => 0,
            Value::Array(_) => 1,
            Value::String(_) => 2,
            Value::Number(_) => 3,
            Value::Bool(_) => 4,
            Value::Null => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            x.iter().zip(y).map(|(p, q)| compare(p, q)).find(|o| o.is_ne()).unwrap_or_else(|| x.len().cmp(&y.len()))
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|p, q| p.0.cmp(q.0));
            ys.sort_by(|p, q| p.0.cmp(q.0));
            xs.iter()
                .zip(&ys)
                .map(|(p, q)| p.0.cmp(q.0).then_with(|| compare(p.1, q.1)))
                .find(|o| o.is_ne())
                .unwrap_or_else(|| xs.len().cmp(&ys.len()))
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

// ---------------------------------------------------------------- functions

/// Bytes `escapeUri` leaves as they are: RFC 3986's unreserved characters.
const URI_UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes everything but RFC 3986's unreserved characters (UTF-8,
/// upper-case hex), as `escapeUri` and form bodies do.
pub fn escape_uri(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, URI_UNRESERVED).to_string()
}

fn number_value(f: f64) -> Result<Value, String> {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        return Ok(Value::from(f as i64));
    }
    Number::from_f64(f).map(Value::Number).ok_or_else(|| "the result is not a finite number".to_owned())
}

fn string_arg<'v>(name: &str, v: &'v Value) -> Result<&'v str, String> {
    v.as_str().ok_or_else(|| format!("{name} expects a String, got {}", type_name(v)))
}

fn call(name: &str, v: &Value, session: Option<&Value>) -> Result<Value, String> {
    Ok(match name {
        "empty" => Value::Bool(match v {
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::String(s) => s.trim().is_empty(),
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::Bool(_) => return Err("Cannot define emptiness for a boolean".into()),
            Value::Null => true,
        }),
        "size" => match v {
            Value::Object(m) => Value::from(m.len()),
            Value::Array(a) => Value::from(a.len()),
            Value::String(s) => Value::from(s.chars().count()),
            Value::Number(_) => v.clone(),
            Value::Bool(b) => Value::from(u8::from(*b)),
            Value::Null => Value::from(0),
        },
        "inverse" => match v {
            Value::Array(a) => Value::Array(a.iter().rev().cloned().collect()),
            Value::String(s) => Value::String(s.chars().rev().collect()),
            Value::Number(n) => {
                let f = n.as_f64().unwrap_or(0.0);
                if f == 0.0 {
                    return Err("inverse of 0".into());
                }
                number_value(1.0 / f)?
            }
            Value::Bool(b) => Value::Bool(!b),
            Value::Object(_) | Value::Null => v.clone(),
        },
        "head" => match v {
            Value::Array(a) => a.first().cloned().ok_or("Empty array")?,
            Value::String(s) => Value::String(s.chars().next().ok_or("Empty string")?.to_string()),
            _ => return Err("Expected an array or string".into()),
        },
        "tail" => match v {
            Value::Array(a) if !a.is_empty() => Value::Array(a[1..].to_vec()),
            Value::String(s) if !s.is_empty() => Value::String(s.chars().skip(1).collect()),
            Value::Array(_) => return Err("Empty array".into()),
            Value::String(_) => return Err("Empty string".into()),
            _ => return Err("Expected an array or string".into()),
        },
        // Unicode case folding is lower-casing but for a few letters that
        // fold to two (ß to ss).
        "toCaseFold" => Value::String(string_arg(name, v)?.to_lowercase().replace('ß', "ss")),
        "toLower" => Value::String(string_arg(name, v)?.to_lowercase()),
        "toUpper" => Value::String(string_arg(name, v)?.to_uppercase()),
        "toTitle" => {
            let mut out = String::new();
            let mut word_start = true;
            for c in string_arg(name, v)?.chars() {
                if c.is_alphanumeric() {
                    if word_start {
                        out.extend(c.to_uppercase());
                    } else {
                        out.extend(c.to_lowercase());
                    }
                    word_start = false;
                } else {
                    out.push(c);
                    word_start = c != '\'';
                }
            }
            Value::String(out)
        }
        "escapeUri" => Value::String(escape_uri(string_arg(name, v)?)),
        "toPairs" => match v {
            Value::Object(m) => {
                Value::Array(m.iter().map(|(k, x)| Value::Array(vec![k.clone().into(), x.clone()])).collect())
            }
            other => return Err(format!("toPairs expects an Object, got {}", type_name(other))),
        },
        "fromPairs" => {
            const SHAPE: &str = "Expected an array of shape [ [k1,v1], [k2,v2] ... ] - With String keys.";
            let pairs = v.as_array().ok_or(SHAPE)?;
            let mut m = Map::new();
            for p in pairs {
                match p.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), x]) => {
                        m.insert(k.clone(), x.clone());
                    }
                    _ => return Err(SHAPE.into()),
                }
            }
            Value::Object(m)
        }
        "removeNulls" => match v {
            Value::Array(a) => Value::Array(a.iter().filter(|x| !x.is_null()).cloned().collect()),
            other => return Err(format!("removeNulls expects an Array, got {}", type_name(other))),
        },
        "concat" => {
            let items = v.as_array().ok_or_else(|| format!("concat expects an Array, got {}", type_name(v)))?;
            if items.iter().all(Value::is_array) {
                Value::Array(items.iter().flat_map(|x| x.as_array().into_iter().flatten().cloned()).collect())
            } else if items.iter().all(Value::is_string) {
                Value::String(items.iter().filter_map(Value::as_str).collect())
            } else if items.iter().all(Value::is_object) {
                let mut m = Map::new();
                for x in items.iter().filter_map(Value::as_object) {
                    for (k, y) in x {
                        m.insert(k.clone(), y.clone());
                    }
                }
                Value::Object(m)
            } else {
                return Err("concat expects an Array of Arrays, of Strings or of Objects".into());
            }
        }
        "not" => match v {
            Value::Bool(b) => Value::Bool(!b),
            other => return Err(format!("not expects a Boolean, got {}", type_name(other))),
        },
        "getSessionVariable" => {
            let wanted = string_arg(name, v)?;
            let found = session
                .and_then(Value::as_object)
                .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(wanted)))
                .map(|(_, x)| x.clone());
            found.ok_or_else(|| format!("Session variable \"{wanted}\" not found"))?
        }
        other => return Err(format!("unknown function '{other}'")),
    })
}

#[cfg(test)]
mod tests;

//! Conditions (`when:`) on resources and configcrate includes: a small expression
//! language over the machine's traits and the bundle's vars, parsed and type-checked at
//! publish (so a typo never reaches a machine) and evaluated by the envoy.
//!
//! ```text
//! expr    := or
//! or      := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | compare
//! compare := value (("==" | "!=" | "<" | "<=" | ">" | ">=") value | "in" list)?
//! value   := "(" expr ")" | STRING | NUMBER | true | false
//!          | hostname | traits.NAME | vars.NAME
//! list    := "[" value ("," value)* "]"
//! ```
//!
//! Strings are quoted with `"` or `'` (backslash escapes the quote and itself); numbers
//! are decimal. Three types: text, number, boolean. Traits have the kinds of
//! [`KNOWN_TRAITS`](crate::traits::KNOWN_TRAITS), vars and `hostname` are text. `==`,
//! `!=` and `in` need one type on both sides, `<` `<=` `>` `>=` numbers, `and` `or`
//! `not` booleans, and the whole condition is a boolean.

use std::collections::{BTreeMap, BTreeSet};

use crate::traits::{TraitKind, trait_kind};

/// The longest condition accepted, in bytes.
pub const MAX_CONDITION_BYTES: usize = 1024;
/// The deepest nesting accepted (parentheses, `not`, lists): parsing recurses.
const MAX_DEPTH: usize = 32;

/// A parsed, type-checked condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    expr: Expr,
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Text(String),
    Number(f64),
    Bool(bool),
    Hostname,
    Trait(String, TraitKind),
    Var(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(Op, Box<Expr>, Box<Expr>),
    In(Box<Expr>, Vec<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Text,
    Number,
    Bool,
}

impl std::fmt::Display for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Type::Text => "text",
            Type::Number => "a number",
            Type::Bool => "a boolean",
        })
    }
}

/// A value while evaluating.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Text(String),
    Number(f64),
    Bool(bool),
}

impl Condition {
    /// Parses and type-checks `source`; the error names what is wrong and where.
    pub fn parse(source: &str) -> Result<Condition, String> {
        if source.len() > MAX_CONDITION_BYTES {
            return Err(format!(
                "condition is {} bytes; the limit is {MAX_CONDITION_BYTES}",
                source.len()
            ));
        }
        let tokens = tokenize(source)?;
        let mut p = Parser { tokens, at: 0 };
        let expr = p.expr(0)?;
        if let Some(t) = p.tokens.get(p.at) {
            return Err(format!("unexpected {t} after the condition"));
        }
        match type_of(&expr)? {
            Type::Bool => Ok(Condition { expr }),
            other => Err(format!("the condition is {other}, not a boolean")),
        }
    }

    /// The vars the condition reads: each must be defined wherever it is applied.
    pub fn vars(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        collect_vars(&self.expr, &mut out);
        out
    }

    /// Evaluates the condition with one machine's facts. Fails when a number trait
    /// does not hold a number, or a var is not defined.
    pub fn eval(
        &self,
        hostname: &str,
        traits: &BTreeMap<String, String>,
        vars: &BTreeMap<String, String>,
    ) -> Result<bool, String> {
        let facts = Facts {
            hostname,
            traits,
            vars,
        };
        match facts.eval(&self.expr)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("condition gave {other:?}, not a boolean")),
        }
    }
}

fn collect_vars<'a>(e: &'a Expr, out: &mut BTreeSet<&'a str>) {
    match e {
        Expr::Var(name) => {
            out.insert(name);
        }
        Expr::Not(a) => collect_vars(a, out),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Compare(_, a, b) => {
            collect_vars(a, out);
            collect_vars(b, out);
        }
        Expr::In(a, list) => {
            collect_vars(a, out);
            list.iter().for_each(|x| collect_vars(x, out));
        }
        _ => {}
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Text(String),
    Number(f64),
    Symbol(&'static str),
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Ident(s) => write!(f, "`{s}`"),
            Token::Text(s) => write!(f, "{s:?}"),
            Token::Number(n) => write!(f, "{n}"),
            Token::Symbol(s) => write!(f, "`{s}`"),
        }
    }
}

const SYMBOLS: [&str; 10] = ["==", "!=", "<=", ">=", "<", ">", "(", ")", "[", "]"];

fn tokenize(source: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut rest = source;
    loop {
        rest = rest.trim_start();
        let Some(c) = rest.chars().next() else {
            return Ok(out);
        };
        if let Some(sym) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            out.push(Token::Symbol(sym));
            rest = &rest[sym.len()..];
        } else if c == ',' {
            out.push(Token::Symbol(","));
            rest = &rest[1..];
        } else if c == '"' || c == '\'' {
            let (text, used) = quoted(rest, c)?;
            out.push(Token::Text(text));
            rest = &rest[used..];
        } else if c.is_ascii_digit() || c == '-' {
            let end = rest[1..]
                .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
                .map_or(rest.len(), |i| i + 1);
            let n: f64 = rest[..end]
                .parse()
                .map_err(|_| format!("bad number {:?}", &rest[..end]))?;
            out.push(Token::Number(n));
            rest = &rest[end..];
        } else if c.is_ascii_alphabetic() || c == '_' {
            let end = rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || "_.-".contains(ch)))
                .unwrap_or(rest.len());
            out.push(Token::Ident(rest[..end].to_string()));
            rest = &rest[end..];
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
}

/// A quoted string at the start of `s`, and the bytes it took.
fn quoted(s: &str, quote: char) -> Result<(String, usize), String> {
    let mut text = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e)) if e == quote || e == '\\' => text.push(e),
                _ => return Err("a backslash escapes only the quote or itself".into()),
            },
            c if c == quote => return Ok((text, i + c.len_utf8())),
            c => text.push(c),
        }
    }
    Err("unterminated string".into())
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Ident(w)) if w == word)
    }

    fn eat_symbol(&mut self, sym: &str) -> bool {
        if matches!(self.tokens.get(self.at), Some(Token::Symbol(s)) if *s == sym) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        let mut left = self.and(depth)?;
        while self.peek_word("or") {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and(depth)?));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, String> {
        let mut left = self.unary(depth)?;
        while self.peek_word("and") {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary(depth)?));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, String> {
        if self.peek_word("not") {
            self.at += 1;
            if depth + 1 > MAX_DEPTH {
                return Err(format!("nested deeper than {MAX_DEPTH}"));
            }
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        let left = self.value(depth)?;
        if self.peek_word("in") {
            self.at += 1;
            return Ok(Expr::In(Box::new(left), self.list(depth)?));
        }
        let op = match self.tokens.get(self.at) {
            Some(Token::Symbol("==")) => Op::Eq,
            Some(Token::Symbol("!=")) => Op::Ne,
            Some(Token::Symbol("<")) => Op::Lt,
            Some(Token::Symbol("<=")) => Op::Le,
            Some(Token::Symbol(">")) => Op::Gt,
            Some(Token::Symbol(">=")) => Op::Ge,
            _ => return Ok(left),
        };
        self.at += 1;
        Ok(Expr::Compare(
            op,
            Box::new(left),
            Box::new(self.value(depth)?),
        ))
    }

    fn list(&mut self, depth: usize) -> Result<Vec<Expr>, String> {
        if !self.eat_symbol("[") {
            return Err("`in` needs a list: [\"a\", \"b\"]".into());
        }
        let mut items = vec![self.value(depth)?];
        while self.eat_symbol(",") {
            items.push(self.value(depth)?);
        }
        if !self.eat_symbol("]") {
            return Err("a list ends with `]`".into());
        }
        Ok(items)
    }

    fn value(&mut self, depth: usize) -> Result<Expr, String> {
        let Some(token) = self.tokens.get(self.at).cloned() else {
            return Err("the condition ends too early".into());
        };
        self.at += 1;
        Ok(match token {
            Token::Symbol("(") => {
                let inner = self.expr(depth + 1)?;
                if !self.eat_symbol(")") {
                    return Err("missing `)`".into());
                }
                inner
            }
            Token::Text(s) => Expr::Text(s),
            Token::Number(n) => Expr::Number(n),
            Token::Ident(word) => name(&word)?,
            other => return Err(format!("unexpected {other}")),
        })
    }
}

/// A bare word: a literal or a fact.
fn name(word: &str) -> Result<Expr, String> {
    match word {
        "true" => return Ok(Expr::Bool(true)),
        "false" => return Ok(Expr::Bool(false)),
        "hostname" => return Ok(Expr::Hostname),
        _ => {}
    }
    if let Some(t) = word.strip_prefix("traits.") {
        return match trait_kind(t) {
            Some(kind) => Ok(Expr::Trait(t.to_string(), kind)),
            None => Err(format!("unknown trait {t:?}")),
        };
    }
    if let Some(v) = word.strip_prefix("vars.")
        && super::load::valid_name(v)
    {
        return Ok(Expr::Var(v.to_string()));
    }
    Err(format!(
        "unknown name `{word}` (traits.NAME, vars.NAME, hostname, true, false; text is quoted)"
    ))
}

fn type_of(e: &Expr) -> Result<Type, String> {
    let need = |e: &Expr, want: Type, what: &str| -> Result<(), String> {
        let got = type_of(e)?;
        if got == want {
            Ok(())
        } else {
            Err(format!("{what} needs {want}, got {got}"))
        }
    };
    Ok(match e {
        Expr::Text(_) | Expr::Hostname | Expr::Var(_) => Type::Text,
        Expr::Trait(_, TraitKind::Text) => Type::Text,
        Expr::Number(_) | Expr::Trait(_, TraitKind::Number) => Type::Number,
        Expr::Bool(_) => Type::Bool,
        Expr::Not(a) => {
            need(a, Type::Bool, "`not`")?;
            Type::Bool
        }
        Expr::And(a, b) | Expr::Or(a, b) => {
            let what = if matches!(e, Expr::And(..)) {
                "`and`"
            } else {
                "`or`"
            };
            need(a, Type::Bool, what)?;
            need(b, Type::Bool, what)?;
            Type::Bool
        }
        Expr::Compare(op, a, b) => {
            let (ta, tb) = (type_of(a)?, type_of(b)?);
            if ta != tb {
                return Err(format!("cannot compare {ta} with {tb}"));
            }
            if !matches!(op, Op::Eq | Op::Ne) && ta != Type::Number {
                return Err(format!("`<`, `<=`, `>`, `>=` compare numbers, not {ta}"));
            }
            Type::Bool
        }
        Expr::In(a, list) => {
            let ta = type_of(a)?;
            for item in list {
                need(item, ta, "every item of the list after `in`")?;
            }
            Type::Bool
        }
    })
}

struct Facts<'a> {
    hostname: &'a str,
    traits: &'a BTreeMap<String, String>,
    vars: &'a BTreeMap<String, String>,
}

impl Facts<'_> {
    fn eval(&self, e: &Expr) -> Result<Value, String> {
        Ok(match e {
            Expr::Text(s) => Value::Text(s.clone()),
            Expr::Number(n) => Value::Number(*n),
            Expr::Bool(b) => Value::Bool(*b),
            Expr::Hostname => Value::Text(self.hostname.to_string()),
            Expr::Var(name) => Value::Text(
                self.vars
                    .get(name)
                    .ok_or_else(|| format!("vars.{name} is not defined"))?
                    .clone(),
            ),
            Expr::Trait(name, kind) => {
                let text = self.traits.get(name).map(String::as_str).unwrap_or("");
                match kind {
                    TraitKind::Text => Value::Text(text.to_string()),
                    TraitKind::Number => Value::Number(
                        text.parse()
                            .map_err(|_| format!("traits.{name} is {text:?} here, not a number"))?,
                    ),
                }
            }
            Expr::Not(a) => Value::Bool(!self.truth(a)?),
            Expr::And(a, b) => Value::Bool(self.truth(a)? && self.truth(b)?),
            Expr::Or(a, b) => Value::Bool(self.truth(a)? || self.truth(b)?),
            Expr::Compare(op, a, b) => {
                let (a, b) = (self.eval(a)?, self.eval(b)?);
                Value::Bool(match (op, &a, &b) {
                    (Op::Eq, _, _) => a == b,
                    (Op::Ne, _, _) => a != b,
                    (_, Value::Number(x), Value::Number(y)) => match op {
                        Op::Lt => x < y,
                        Op::Le => x <= y,
                        Op::Gt => x > y,
                        _ => x >= y,
                    },
                    _ => return Err("ordering compares numbers only".into()),
                })
            }
            Expr::In(a, list) => {
                let a = self.eval(a)?;
                let mut found = false;
                for item in list {
                    found |= self.eval(item)? == a;
                }
                Value::Bool(found)
            }
        })
    }

    fn truth(&self, e: &Expr) -> Result<bool, String> {
        match self.eval(e)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("{other:?} is not a boolean")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(source: &str) -> Result<bool, String> {
        let traits = BTreeMap::from([
            ("os".to_string(), "debian".to_string()),
            ("cpus".to_string(), "4".to_string()),
            ("memory_mb".to_string(), String::new()),
        ]);
        let vars = BTreeMap::from([("tier".to_string(), "prod".to_string())]);
        Condition::parse(source)?.eval("web-1", &traits, &vars)
    }

    #[test]
    fn evaluates_traits_vars_and_logic() {
        assert_eq!(
            eval(r#"traits.os == "debian" and vars.tier != "dev""#),
            Ok(true)
        );
        assert_eq!(eval("traits.cpus >= 4 and not (traits.cpus > 4)"), Ok(true));
        assert_eq!(eval("traits.os in ['ubuntu', 'debian']"), Ok(true));
        assert_eq!(eval("hostname == 'web-2' or false"), Ok(false));
        assert_eq!(eval(r#"vars.tier == "it's \"prod\"""#), Ok(false));
        assert_eq!(
            eval(r#"vars.tier == "a\n""#).unwrap_err(),
            "a backslash escapes only the quote or itself"
        );
        assert_eq!(eval(r#"vars.tier == 'prod'"#), Ok(true));
    }

    #[test]
    fn refuses_unknown_names_and_type_errors_at_parse() {
        for (source, why) in [
            ("traits.colour == 'red'", "unknown trait \"colour\""),
            ("os == 'debian'", "unknown name `os`"),
            ("traits.os > 3", "cannot compare text with a number"),
            ("traits.os < 'z'", "compare numbers, not text"),
            ("traits.cpus", "the condition is a number, not a boolean"),
            (
                "traits.os == 'a' and 'b'",
                "`and` needs a boolean, got text",
            ),
            (
                "traits.os in ['a', 2]",
                "every item of the list after `in` needs text",
            ),
            ("(traits.os == 'a'", "missing `)`"),
            (
                "traits.os == 'a' vars.x",
                "unexpected `vars.x` after the condition",
            ),
            ("traits.os == ", "the condition ends too early"),
            ("traits.os ~ 'a'", "unexpected character '~'"),
        ] {
            let err = Condition::parse(source).unwrap_err();
            assert!(err.contains(why), "{source}: {err}");
        }
    }

    #[test]
    fn hostile_input_is_bounded() {
        let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
        assert!(
            Condition::parse(&deep)
                .unwrap_err()
                .contains("nested deeper")
        );
        let nots = format!("{}true", "not ".repeat(100));
        assert!(
            Condition::parse(&nots)
                .unwrap_err()
                .contains("nested deeper")
        );
        let long = format!("traits.os == '{}'", "a".repeat(2000));
        assert!(Condition::parse(&long).unwrap_err().contains("limit"));
    }

    #[test]
    fn runtime_facts_that_do_not_fit_fail_by_name() {
        assert_eq!(
            eval("traits.memory_mb > 100").unwrap_err(),
            "traits.memory_mb is \"\" here, not a number"
        );
        assert_eq!(
            eval("vars.nope == 'x'").unwrap_err(),
            "vars.nope is not defined"
        );
        let c = Condition::parse("vars.a == vars.b or vars.a == 'x'").unwrap();
        assert_eq!(c.vars().into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }
}

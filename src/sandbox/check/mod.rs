//! What an operator's template may do, decided on minijinja's own reading of it, never on a second
//! one of ours:
//!
//! 1. minijinja's lexer splits the template; on its tokens we bound how deeply the parser could
//!    recurse (block nesting, and the operators of one tag: every level of an expression's tree
//!    costs at least one of them). Only then is it parsed, so no input can overflow the stack.
//! 2. minijinja's parser builds the AST the engine compiles; it is walked with an allow-list of
//!    statements (`if`, `for`), expressions, filters and tests.
//! 3. The same walk bounds the string work of one render with the longest data a notification may
//!    carry: every value has a size bound from its shape (a data value is at most
//!    [`MAX_VALUE_CHARS`] characters, a loop runs at most as often as its iterable has items and
//!    never more than the fuel allows), every node is charged the bytes it reads and writes, times
//!    how often it can run. A template over [`WORK_BUDGET`] is refused before it ever runs, so
//!    neither `~` chains nor filters in loops can take CPU or memory that grows with the data.

use minijinja::machinery::{ast, parse, tokenize, Span, Token};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;

use super::{describe, Refusal, FUEL, MAX_BODY_OUTPUT};
use crate::events::MAX_VALUE_CHARS;

/// Operators, brackets and keyword operators one tag may hold: a bound on its expression's depth.
pub const MAX_TAG_OPERATORS: usize = 100;
/// Blocks open at once (each `elif` counts as one more, since the parser nests it).
pub const MAX_NESTING: usize = 64;
/// Bytes of string work (read and written) one render may do with the longest data.
pub const WORK_BUDGET: u64 = 32 * 1024 * 1024;
/// The largest number a template may spell out.
const MAX_NUMBER: f64 = 1000.0;
/// The bytes of the longest data value (a character is at most four bytes of UTF-8).
const VAR_BYTES: u64 = 4 * MAX_VALUE_CHARS as u64;

pub const FILTERS: &[&str] = &[
    "upper",
    "lower",
    "title",
    "capitalize",
    "trim",
    "default",
    "d",
    "length",
    "first",
    "last",
    "string",
    "escape",
    "e",
    "truncate",
];
pub const TESTS: &[&str] = &["defined", "undefined", "none"];

/// Checks `source`: bounded nesting, only allowed constructs, bounded work.
pub fn check(source: &str) -> Result<(), Refusal> {
    check_nesting(source)?;
    let syntax = SyntaxConfig::default();
    let tree = parse(source, "<template>", syntax).map_err(invalid)?;
    let mut walk = Walk {
        runs: 1,
        ..Walk::default()
    };
    walk.stmt(&tree);
    walk.finish()
}

/// A syntax error, with its line.
fn invalid(e: minijinja::Error) -> Refusal {
    match e.line() {
        Some(line) => Refusal::Invalid(format!("line {line}: {}", describe(&e))),
        None => Refusal::Invalid(describe(&e)),
    }
}

/// Bounds the parser's recursion on the lexer's tokens, before anything is parsed.
fn check_nesting(source: &str) -> Result<(), Refusal> {
    let mut open: Vec<usize> = Vec::new();
    let mut depth = 0;
    let mut operators = 0;
    let mut statement_next = false;
    for token in tokenize(source, false, SyntaxConfig::default()) {
        let (token, span) = token.map_err(invalid)?;
        let statement = std::mem::take(&mut statement_next);
        match token {
            Token::VariableStart => operators = 0,
            Token::BlockStart => {
                operators = 0;
                statement_next = true;
            }
            Token::Ident(name) if statement => match name {
                "elif" => {
                    if let Some(top) = open.last_mut() {
                        *top += 1;
                        depth += 1;
                    }
                }
                "else" => {}
                end if end.starts_with("end") => depth -= open.pop().unwrap_or(0),
                // Statements that open no block are counted too: they are refused later anyway.
                _ => {
                    open.push(1);
                    depth += 1;
                }
            },
            ref t if deepens(t) => operators += 1,
            _ => {}
        }
        if depth > MAX_NESTING {
            return Err(Refusal::TooExpensive(format!(
                "line {}: blocks nest more than {MAX_NESTING} deep",
                span.start_line
            )));
        }
        if operators > MAX_TAG_OPERATORS {
            return Err(Refusal::TooExpensive(format!(
                "line {}: a tag has more than {MAX_TAG_OPERATORS} operators",
                span.start_line
            )));
        }
    }
    Ok(())
}

/// Tokens that can open one more level of an expression's tree.
fn deepens(token: &Token) -> bool {
    match token {
        Token::Ident(name) => matches!(*name, "not" | "and" | "or" | "in" | "is" | "if" | "else"),
        Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::FloorDiv
        | Token::Pow
        | Token::Mod
        | Token::Dot
        | Token::Tilde
        | Token::Assign
        | Token::Pipe
        | Token::Eq
        | Token::Ne
        | Token::Gt
        | Token::Gte
        | Token::Lt
        | Token::Lte
        | Token::BracketOpen
        | Token::ParenOpen
        | Token::BraceOpen => true,
        _ => false,
    }
}

/// A bound on a value: its bytes, how many items iterating it yields, and the bytes of one item
/// (an item's own items are bounded by the item itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    bytes: u64,
    items: u64,
    item_bytes: u64,
}

impl Shape {
    /// A string (or number, or boolean) of at most `bytes`: its items are characters.
    fn text(bytes: u64) -> Self {
        Self {
            bytes,
            items: bytes,
            item_bytes: bytes.min(4),
        }
    }

    /// The shape of one item.
    fn item(self) -> Self {
        Self {
            bytes: self.item_bytes,
            items: self.item_bytes,
            item_bytes: self.item_bytes,
        }
    }

    fn union(self, other: Self) -> Self {
        Self {
            bytes: self.bytes.max(other.bytes),
            items: self.items.max(other.items),
            item_bytes: self.item_bytes.max(other.item_bytes),
        }
    }

    /// A collection of `items` values of these shapes.
    fn collection(items: &[Shape]) -> Self {
        Self {
            bytes: items
                .iter()
                .fold(items.len() as u64, |sum, s| sum.saturating_add(s.bytes)),
            items: items.len() as u64,
            item_bytes: items.iter().map(|s| s.bytes).max().unwrap_or(0),
        }
    }
}

/// The allow-list and cost walk over one template's AST.
#[derive(Default)]
struct Walk<'s> {
    /// Loop variables in scope, innermost last.
    scope: Vec<(&'s str, Shape)>,
    /// How often the node being walked can run in one render (at most [`FUEL`]).
    runs: u64,
    work: u64,
    /// The line of the node that costs most, for the refusal.
    costliest: (u64, u16),
    too_expensive: Option<String>,
    invalid: Option<String>,
}

impl<'s> Walk<'s> {
    fn finish(self) -> Result<(), Refusal> {
        if let Some(m) = self.too_expensive {
            return Err(Refusal::TooExpensive(m));
        }
        if let Some(m) = self.invalid {
            return Err(Refusal::Invalid(m));
        }
        if self.work > WORK_BUDGET {
            return Err(Refusal::TooExpensive(format!(
                "line {}: with the longest data this template could process {} MiB of text in one \
                 rendering (at most {} MiB): use fewer `~` and filters on long values, above all \
                 inside loops",
                self.costliest.1,
                self.work / (1024 * 1024),
                WORK_BUDGET / (1024 * 1024)
            )));
        }
        Ok(())
    }

    fn refuse_invalid(&mut self, span: Span, message: impl std::fmt::Display) {
        if self.invalid.is_none() {
            self.invalid = Some(format!("line {}: {message}", span.start_line));
        }
    }

    fn refuse_expensive(&mut self, span: Span, message: impl std::fmt::Display) {
        if self.too_expensive.is_none() {
            self.too_expensive = Some(format!("line {}: {message}", span.start_line));
        }
    }

    /// Charges `bytes` of work for one run of the node at `span`, times its runs.
    fn charge(&mut self, span: Span, bytes: u64) {
        let cost = bytes.max(1).saturating_mul(self.runs);
        self.work = self.work.saturating_add(cost);
        if cost > self.costliest.0 {
            self.costliest = (cost, span.start_line);
        }
    }

    fn stmts(&mut self, list: &[ast::Stmt<'s>]) {
        for stmt in list {
            self.stmt(stmt);
        }
    }

    fn stmt(&mut self, stmt: &ast::Stmt<'s>) {
        use ast::Stmt;
        let (span, name) = match stmt {
            Stmt::Template(t) => return self.stmts(&t.children),
            // Output is bounded by the writer, not here.
            Stmt::EmitExpr(e) => {
                self.expr(&e.expr);
                return;
            }
            Stmt::EmitRaw(_) => return,
            Stmt::ForLoop(f) => return self.for_loop(f.span(), f),
            Stmt::IfCond(i) => {
                self.expr(&i.expr);
                self.stmts(&i.true_body);
                self.stmts(&i.false_body);
                return;
            }
            Stmt::Set(s) => {
                // What it would compute still counts: `set s = 'x' * 99999999` is too expensive.
                self.expr(&s.expr);
                (s.span(), "set")
            }
            Stmt::SetBlock(s) => (s.span(), "set"),
            Stmt::WithBlock(s) => (s.span(), "with"),
            Stmt::AutoEscape(s) => (s.span(), "autoescape"),
            Stmt::FilterBlock(s) => (s.span(), "filter"),
            Stmt::Block(s) => (s.span(), "block"),
            Stmt::Import(s) => (s.span(), "import"),
            Stmt::FromImport(s) => (s.span(), "from"),
            Stmt::Extends(s) => (s.span(), "extends"),
            Stmt::Include(s) => (s.span(), "include"),
            Stmt::Macro(s) => (s.span(), "macro"),
            Stmt::CallBlock(s) => (s.span(), "call"),
            Stmt::Do(s) => (s.span(), "do"),
            #[allow(unreachable_patterns)]
            _ => (Span::default(), "this statement"),
        };
        self.refuse_invalid(
            span,
            format_args!("templates may use only if and for blocks, not `{name}`"),
        );
    }

    fn for_loop(&mut self, span: Span, f: &ast::ForLoop<'s>) {
        if f.recursive {
            self.refuse_invalid(span, "recursive loops are not allowed in templates");
        }
        let iter = self.expr(&f.iter);
        let outer = self.runs;
        let scope = self.scope.len();
        self.runs = outer.saturating_mul(iter.items.max(1)).min(FUEL);
        self.bind(&f.target, iter.item());
        let loop_var = iter.item().union(Shape::text(64));
        self.scope.push(("loop", loop_var));
        if let Some(filter) = &f.filter_expr {
            self.expr(filter);
        }
        self.stmts(&f.body);
        self.scope.truncate(scope);
        self.runs = outer;
        self.stmts(&f.else_body);
    }

    fn bind(&mut self, target: &ast::Expr<'s>, shape: Shape) {
        match target {
            ast::Expr::Var(v) => self.scope.push((v.id, shape)),
            ast::Expr::Tuple(t) => t.items.iter().for_each(|i| self.bind(i, shape.item())),
            ast::Expr::List(l) => l.items.iter().for_each(|i| self.bind(i, shape.item())),
            other => self.refuse_invalid(other.span(), "a loop variable must be a name"),
        }
    }

    fn variable(&self, name: &str) -> Shape {
        if let Some((_, shape)) = self.scope.iter().rev().find(|(n, _)| *n == name) {
            return *shape;
        }
        match name {
            // The rendered body, framed by the layout.
            "content" => Shape::text(MAX_BODY_OUTPUT as u64),
            "branding" => Shape {
                bytes: 16 * VAR_BYTES,
                items: 16,
                item_bytes: VAR_BYTES,
            },
            // Data values are strings, numbers or booleans, never lists.
            _ => Shape::text(VAR_BYTES),
        }
    }

    fn expr(&mut self, expr: &ast::Expr<'s>) -> Shape {
        use ast::Expr;
        let span = expr.span();
        let (shape, cost) = match expr {
            Expr::Var(v) => (self.variable(v.id), 1),
            Expr::Const(c) => (self.constant(span, &c.value), 1),
            Expr::Slice(s) => {
                let base = self.expr(&s.expr);
                for bound in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(bound);
                }
                (base, base.bytes)
            }
            Expr::UnaryOp(u) => {
                self.expr(&u.expr);
                (Shape::text(40), 1)
            }
            Expr::BinOp(b) => self.binop(span, b),
            Expr::Compare(c) => {
                let mut read = self.expr(&c.expr).bytes;
                for op in &c.ops {
                    read = read.saturating_add(self.expr(&op.expr).bytes);
                }
                (Shape::text(8), read)
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr);
                let yes = self.expr(&i.true_expr);
                let no = i.false_expr.as_ref().map_or(Shape::text(0), |e| self.expr(e));
                (yes.union(no), 1)
            }
            Expr::Filter(f) => self.filter(span, f),
            Expr::Test(t) => {
                if !TESTS.contains(&t.name) {
                    self.refuse_invalid(
                        span,
                        format_args!(
                            "unknown test `{}`; templates may use the tests {}",
                            t.name,
                            TESTS.join(", ")
                        ),
                    );
                }
                self.expr(&t.expr);
                self.args(&t.args);
                (Shape::text(8), 1)
            }
            Expr::GetAttr(a) => (self.expr(&a.expr).item(), 1),
            Expr::GetItem(g) => {
                let base = self.expr(&g.expr);
                let key = self.expr(&g.subscript_expr);
                (base.item(), base.bytes.saturating_add(key.bytes))
            }
            Expr::Call(c) => {
                self.refuse_invalid(span, "templates cannot call functions or methods");
                self.expr(&c.expr);
                self.args(&c.args);
                (Shape::text(0), 1)
            }
            Expr::List(l) => self.collection(&l.items),
            Expr::Tuple(t) => self.collection(&t.items),
            Expr::Map(m) => {
                let items: Vec<Shape> = m.keys.iter().chain(&m.values).map(|e| self.expr(e)).collect();
                let mut shape = Shape::collection(&items);
                shape.items = m.keys.len() as u64;
                (shape, shape.items)
            }
        };
        self.charge(span, cost);
        shape
    }

    fn collection(&mut self, items: &[ast::Expr<'s>]) -> (Shape, u64) {
        let shapes: Vec<Shape> = items.iter().map(|e| self.expr(e)).collect();
        (Shape::collection(&shapes), shapes.len() as u64)
    }

    fn constant(&mut self, span: Span, value: &minijinja::Value) -> Shape {
        if value.kind() == ValueKind::Number {
            let big = value
                .to_string()
                .parse::<f64>()
                .map_or(true, |n| !n.is_finite() || n.abs() > MAX_NUMBER);
            if big {
                self.refuse_expensive(
                    span,
                    format_args!("numbers above {MAX_NUMBER} are not allowed in templates"),
                );
            }
        }
        Shape::text(value.as_str().map_or(40, |s| s.len() as u64))
    }

    fn binop(&mut self, span: Span, b: &ast::BinOp<'s>) -> (Shape, u64) {
        use ast::BinOpKind as Op;
        let left = self.expr(&b.left);
        let right = self.expr(&b.right);
        let read = left.bytes.saturating_add(right.bytes);
        match b.op {
            Op::Mul | Op::Pow => {
                self.refuse_expensive(
                    span,
                    "the * and ** operators are not allowed in templates (they can build huge strings)",
                );
                (Shape::text(0), 1)
            }
            // Strings and lists: the result holds both sides.
            Op::Concat | Op::Add => (
                Shape {
                    bytes: read,
                    items: left.items.saturating_add(right.items),
                    item_bytes: left.item_bytes.max(right.item_bytes),
                },
                read,
            ),
            Op::ScAnd | Op::ScOr => (left.union(right), 1),
            Op::Sub | Op::Div | Op::FloorDiv | Op::Rem => (Shape::text(40), 1),
            Op::Eq | Op::Ne | Op::Lt | Op::Lte | Op::Gt | Op::Gte | Op::In => (Shape::text(8), read),
        }
    }

    fn args(&mut self, args: &[ast::CallArg<'s>]) -> Vec<Shape> {
        args.iter()
            .map(|arg| match arg {
                ast::CallArg::Pos(e) | ast::CallArg::Kwarg(_, e) => self.expr(e),
                ast::CallArg::PosSplat(e) | ast::CallArg::KwargSplat(e) => {
                    self.refuse_invalid(e.span(), "argument spreading is not allowed in templates");
                    self.expr(e)
                }
            })
            .collect()
    }

    fn filter(&mut self, span: Span, f: &ast::Filter<'s>) -> (Shape, u64) {
        if !FILTERS.contains(&f.name) {
            self.refuse_invalid(
                span,
                format_args!(
                    "unknown filter `{}`; templates may use the filters {}",
                    f.name,
                    FILTERS.join(", ")
                ),
            );
        }
        let input = match &f.expr {
            Some(e) => self.expr(e),
            None => Shape::text(0),
        };
        let args = self.args(&f.args);
        let args_bytes = args.iter().fold(0u64, |sum, a| sum.saturating_add(a.bytes));
        let output = match f.name {
            // Case mapping can lengthen a character up to three times in UTF-8 bytes.
            "upper" | "lower" | "title" | "capitalize" => Shape::text(input.bytes.saturating_mul(3)),
            "trim" => Shape::text(input.bytes),
            "default" | "d" => args.iter().fold(input, |s, a| s.union(*a)),
            "length" => Shape::text(20),
            "first" | "last" => input.item(),
            // A list's text adds quotes and separators to its items.
            "string" => Shape::text(input.bytes.saturating_mul(4).saturating_add(40)),
            // `'` becomes `&#x27;`.
            "escape" | "e" => Shape::text(input.bytes.saturating_mul(6)),
            "truncate" => Shape::text(input.bytes.saturating_add(args_bytes)),
            _ => Shape::text(0),
        };
        (
            output,
            input
                .bytes
                .saturating_add(output.bytes)
                .saturating_add(args_bytes),
        )
    }
}

#[cfg(test)]
mod tests;

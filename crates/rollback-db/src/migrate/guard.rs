//! The data-loss guard: which tables and columns a down migration drops.
//!
//! The SQL is tokenised (comments and string literals skipped, quoted
//! identifiers kept as written, unquoted ones folded to lower case as
//! PostgreSQL does) and scanned for `DROP TABLE a, b` and
//! `ALTER TABLE t … DROP [COLUMN] [IF EXISTS] c`. The bodies of
//! dollar-quoted blocks (`DO $$ … $$`, the seeds' style) are scanned too.

/// Something a down migration drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drop {
    /// The schema, when the name is qualified.
    pub schema: Option<String>,
    /// The table.
    pub table: String,
    /// The column, for `ALTER TABLE … DROP COLUMN`; `None` for a whole table.
    pub column: Option<String>,
}

impl std::fmt::Display for Drop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = match &self.schema {
            Some(s) => format!("{s}.{}", self.table),
            None => self.table.clone(),
        };
        match &self.column {
            Some(c) => write!(f, "column {table}.{c}"),
            None => write!(f, "table {table}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An unquoted word, folded to lower case.
    Word(String),
    /// A quoted identifier, as written.
    Quoted(String),
    /// Punctuation: `.`, `,`, `;`, `(`, `)` and anything else.
    Punct(char),
}

impl Token {
    fn is_word(&self, word: &str) -> bool {
        matches!(self, Token::Word(w) if w == word)
    }

    fn ident(&self) -> Option<String> {
        match self {
            Token::Word(w) => Some(w.clone()),
            Token::Quoted(q) => Some(q.clone()),
            Token::Punct(_) => None,
        }
    }
}

/// Tokenises `sql`; dollar-quoted bodies are tokenised in place (their
/// statements are scanned like the rest), other string literals dropped.
fn tokenize(sql: &str, out: &mut Vec<Token>) {
    tokenize_with(sql, out, true)
}

fn tokenize_with(sql: &str, out: &mut Vec<Token>, expand_dollar: bool) {
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            // PostgreSQL block comments nest.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' {
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            // A string stands where a value would: keep a placeholder.
            out.push(Token::Punct('\''));
        } else if c == '"' || c == '`' {
            let close = c;
            let mut ident = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == close {
                    if chars.get(i + 1) == Some(&close) {
                        ident.push(close);
                        i += 2;
                        continue;
                    }
                    break;
                }
                ident.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Token::Quoted(ident));
        } else if c == '$' {
            // $tag$ ... $tag$ (tag may be empty); otherwise a parameter like $1.
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            let tag_is_param = j > i + 1 && chars[i + 1].is_ascii_digit();
            if j < chars.len() && chars[j] == '$' && !tag_is_param {
                let tag: String = chars[i..=j].iter().collect();
                let body_start = j + 1;
                let rest: String = chars[body_start..].iter().collect();
                match rest.find(&tag) {
                    Some(end) if !expand_dollar => {
                        out.push(Token::Punct('\''));
                        i = body_start + rest[..end].chars().count() + tag.chars().count();
                    }
                    None if !expand_dollar => {
                        out.push(Token::Punct('\''));
                        i = chars.len();
                    }
                    Some(end) => {
                        let body = &rest[..end];
                        tokenize_with(body, out, true);
                        out.push(Token::Punct(';'));
                        i = body_start + body.chars().count() + tag.chars().count();
                    }
                    None => {
                        tokenize_with(&rest, out, true);
                        i = chars.len();
                    }
                }
            } else {
                out.push(Token::Punct('$'));
                i = j.max(i + 1);
            }
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = String::new();
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                word.push(chars[i]);
                i += 1;
            }
            out.push(Token::Word(word.to_lowercase()));
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
}

/// Reads `[schema .] name` at `tokens[i]`; returns it and the next index.
fn qualified_name(tokens: &[Token], i: usize) -> Option<((Option<String>, String), usize)> {
    let first = tokens.get(i)?.ident()?;
    if tokens.get(i + 1) == Some(&Token::Punct('.')) {
        let second = tokens.get(i + 2)?.ident()?;
        Some(((Some(first), second), i + 3))
    } else {
        Some(((None, first), i + 1))
    }
}

/// The tables and columns `sql` drops.
pub fn drops(sql: &str) -> Vec<Drop> {
    let mut tokens = Vec::new();
    tokenize(sql, &mut tokens);
    let mut found = Vec::new();
    for statement in tokens.split(|t| *t == Token::Punct(';')) {
        scan_statement(statement, &mut found);
    }
    found.dedup();
    found
}

/// The first top-level statement of `sql` that controls transactions
/// (`BEGIN`, `COMMIT`, `ROLLBACK`, `START TRANSACTION`, `END`, `SAVEPOINT`…),
/// if any; bodies of `DO $$ … $$` blocks do not count.
pub fn transaction_control(sql: &str) -> Option<String> {
    let mut tokens = Vec::new();
    tokenize_with(sql, &mut tokens, false);
    tokens
        .split(|t| *t == Token::Punct(';'))
        .filter_map(|s| match s.first() {
            Some(Token::Word(w)) => Some((w.as_str(), s.get(1))),
            _ => None,
        })
        .find_map(|(w, next)| match w {
            "begin" | "commit" | "rollback" | "end" | "abort" | "savepoint" | "release" => {
                Some(w.to_uppercase())
            }
            "start" if next.is_some_and(|t| t.is_word("transaction")) => {
                Some("START TRANSACTION".into())
            }
            _ => None,
        })
}

fn scan_statement(s: &[Token], found: &mut Vec<Drop>) {
    // Statements may follow keywords such as BEGIN or IF ... THEN inside a DO
    // block: look for the two shapes anywhere in the statement.
    let mut i = 0;
    while i + 1 < s.len() {
        if s[i].is_word("drop") && s[i + 1].is_word("table") {
            let mut j = i + 2;
            if s.get(j).is_some_and(|t| t.is_word("if"))
                && s.get(j + 1).is_some_and(|t| t.is_word("exists"))
            {
                j += 2;
            }
            while let Some(((schema, table), next)) = qualified_name(s, j) {
                if matches!(s.get(j), Some(Token::Word(w)) if w == "cascade" || w == "restrict") {
                    break;
                }
                found.push(Drop {
                    schema,
                    table,
                    column: None,
                });
                if s.get(next) == Some(&Token::Punct(',')) {
                    j = next + 1;
                } else {
                    break;
                }
            }
            i = j.max(i + 2);
        } else if s[i].is_word("alter") && s[i + 1].is_word("table") {
            let mut j = i + 2;
            if s.get(j).is_some_and(|t| t.is_word("if"))
                && s.get(j + 1).is_some_and(|t| t.is_word("exists"))
            {
                j += 2;
            }
            if s.get(j).is_some_and(|t| t.is_word("only")) {
                j += 1;
            }
            let Some(((schema, table), next)) = qualified_name(s, j) else {
                i += 2;
                continue;
            };
            // Actions are separated by top-level commas.
            let mut depth = 0i32;
            let mut action_start = next;
            let mut k = next;
            while k <= s.len() {
                let at_end = k == s.len();
                let token = s.get(k);
                match token {
                    Some(Token::Punct('(')) => depth += 1,
                    Some(Token::Punct(')')) => depth -= 1,
                    _ => {}
                }
                if at_end || (depth == 0 && token == Some(&Token::Punct(','))) {
                    if let Some(column) = dropped_column(&s[action_start..k]) {
                        found.push(Drop {
                            schema: schema.clone(),
                            table: table.clone(),
                            column: Some(column),
                        });
                    }
                    action_start = k + 1;
                }
                k += 1;
            }
            i = s.len();
        } else {
            i += 1;
        }
    }
}

/// `DROP [COLUMN] [IF EXISTS] name [CASCADE]` → the column's name.
fn dropped_column(action: &[Token]) -> Option<String> {
    if !action.first()?.is_word("drop") {
        return None;
    }
    let mut j = 1;
    match action.get(j)? {
        Token::Word(w) if w == "column" => j += 1,
        Token::Word(w)
            if matches!(
                w.as_str(),
                "constraint" | "default" | "not" | "expression" | "identity"
            ) =>
        {
            return None
        }
        _ => {}
    }
    if action.get(j).is_some_and(|t| t.is_word("if"))
        && action.get(j + 1).is_some_and(|t| t.is_word("exists"))
    {
        j += 2;
    }
    action.get(j)?.ident()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(schema: Option<&str>, table: &str, column: Option<&str>) -> Drop {
        Drop {
            schema: schema.map(str::to_string),
            table: table.into(),
            column: column.map(str::to_string),
        }
    }

    #[test]
    fn finds_dropped_tables() {
        assert_eq!(
            drops("DROP TABLE IF EXISTS Orders, \"Line Items\" CASCADE;"),
            vec![d(None, "orders", None), d(None, "Line Items", None)]
        );
        assert_eq!(
            drops("drop table shop.\"Carts\""),
            vec![d(Some("shop"), "Carts", None)]
        );
    }

    #[test]
    fn finds_dropped_columns() {
        assert_eq!(
            drops("ALTER TABLE orders DROP COLUMN IF EXISTS new_field;"),
            vec![d(None, "orders", Some("new_field"))]
        );
        assert_eq!(
            drops("ALTER TABLE ONLY \"Orders\" DROP a, DROP CONSTRAINT c, ADD CONSTRAINT x CHECK (a > 0), DROP COLUMN \"B\""),
            vec![d(None, "Orders", Some("a")), d(None, "Orders", Some("B"))]
        );
        assert!(drops(
            "ALTER TABLE orders ALTER COLUMN a DROP DEFAULT, ALTER COLUMN b DROP NOT NULL"
        )
        .is_empty());
        assert!(drops("ALTER TABLE orders DROP CONSTRAINT check_amount").is_empty());
    }

    #[test]
    fn ignores_comments_and_strings() {
        assert!(drops(
            "-- DROP TABLE orders;\n/* DROP TABLE x; /* nested */ */ SELECT 'DROP TABLE y';"
        )
        .is_empty());
    }

    #[test]
    fn scans_do_blocks_like_the_seed() {
        let sql = "BEGIN;\nDO $$\nBEGIN\n    IF EXISTS (SELECT 1 FROM schema_migrations WHERE version = '20250115120000') THEN\n        ALTER TABLE orders DROP COLUMN IF EXISTS new_field;\n        ALTER TABLE orders ADD CONSTRAINT check_amount CHECK (amount > 0);\n    END IF;\nEND $$;\nCOMMIT;";
        assert_eq!(drops(sql), vec![d(None, "orders", Some("new_field"))]);
    }

    #[test]
    fn finds_transaction_control_outside_do_blocks() {
        assert_eq!(
            transaction_control("BEGIN; DELETE FROM t; COMMIT;").as_deref(),
            Some("BEGIN")
        );
        assert_eq!(
            transaction_control("DELETE FROM t;\ncommit").as_deref(),
            Some("COMMIT")
        );
        assert_eq!(
            transaction_control(
                "DO $$ BEGIN UPDATE t SET a = 1; END $$; UPDATE t SET b = 'BEGIN;';"
            ),
            None
        );
    }

    #[test]
    fn parameters_are_not_dollar_quotes() {
        assert_eq!(drops("SELECT $1; DROP TABLE t;"), vec![d(None, "t", None)]);
    }
}

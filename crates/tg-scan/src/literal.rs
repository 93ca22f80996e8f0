//! Python literals as `ast.literal_eval` reads them, for `.npy` headers: strings (with escapes),
//! numbers, `True`/`False`/`None`, tuples, lists and dicts. Bounded in depth and size.

/// A parsed literal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Str(String),
    Num,
    Const,
    Seq(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

impl Lit {
    pub(crate) fn dict_get(&self, key: &str) -> Option<&Lit> {
        match self {
            Lit::Dict(items) => items
                .iter()
                .rev()
                .find(|(k, _)| *k == Lit::Str(key.to_owned()))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Parse one literal that spans all of `s` (surrounding whitespace allowed).
pub(crate) fn parse(s: &str) -> Option<Lit> {
    let mut p = Parser {
        s: s.as_bytes(),
        i: 0,
        depth: 0,
    };
    let v = p.value()?;
    p.ws();
    (p.i == p.s.len()).then_some(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: u32,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && (self.s[self.i] as char).is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn value(&mut self) -> Option<Lit> {
        self.depth += 1;
        if self.depth > 64 {
            return None;
        }
        self.ws();
        let v = match self.peek()? {
            b'\'' | b'"' => {
                // Adjacent string literals concatenate.
                let mut out = self.string()?;
                loop {
                    self.ws();
                    match self.peek() {
                        Some(b'\'' | b'"') => out.push_str(&self.string()?),
                        _ => break,
                    }
                }
                Lit::Str(out)
            }
            b'(' => self.seq(b')')?,
            b'[' => self.seq(b']')?,
            b'{' => self.dict()?,
            c if c.is_ascii_digit() || c == b'-' || c == b'+' || c == b'.' => {
                while self.peek().is_some_and(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'_')
                }) {
                    self.i += 1;
                }
                Lit::Num
            }
            _ => {
                let start = self.i;
                while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                    self.i += 1;
                }
                match &self.s[start..self.i] {
                    b"True" | b"False" | b"None" => Lit::Const,
                    _ => return None,
                }
            }
        };
        self.depth -= 1;
        Some(v)
    }

    fn seq(&mut self, close: u8) -> Option<Lit> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.ws();
            if self.peek()? == close {
                self.i += 1;
                return Some(Lit::Seq(items));
            }
            items.push(self.value()?);
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                c if c == close => {}
                _ => return None,
            }
        }
    }

    fn dict(&mut self) -> Option<Lit> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.ws();
            if self.peek()? == b'}' {
                self.i += 1;
                return Some(Lit::Dict(items));
            }
            let k = self.value()?;
            self.ws();
            if self.peek()? != b':' {
                return None;
            }
            self.i += 1;
            let v = self.value()?;
            items.push((k, v));
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {}
                _ => return None,
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        let q = self.peek()?;
        self.i += 1;
        let mut out = String::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            if c == q {
                return Some(out);
            }
            if c != b'\\' {
                out.push(c as char);
                continue;
            }
            let e = self.peek()?;
            self.i += 1;
            match e {
                b'n' => out.push('\n'),
                b't' => out.push('\t'),
                b'r' => out.push('\r'),
                b'0' => out.push('\0'),
                b'\\' | b'\'' | b'"' => out.push(e as char),
                b'x' => {
                    let h = std::str::from_utf8(self.s.get(self.i..self.i + 2)?).ok()?;
                    out.push(char::from(u8::from_str_radix(h, 16).ok()?));
                    self.i += 2;
                }
                b'u' => {
                    let h = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
                    out.push(char::from_u32(u32::from_str_radix(h, 16).ok()?)?);
                    self.i += 4;
                }
                b'\n' => {}
                other => {
                    out.push('\\');
                    out.push(other as char);
                }
            }
        }
    }
}

/// Whether `numpy.dtype(descr)` may be an object dtype (or contain one). Only descr strings of
/// a plain numeric or byte/str kind are known to be pure data.
pub(crate) fn descr_may_hold_objects(descr: &Lit) -> bool {
    match descr {
        Lit::Str(s) => !plain_dtype(s),
        // Structured dtypes: [(name, type), (name, type, shape), ...]
        Lit::Seq(fields) => fields.iter().any(|f| match f {
            Lit::Seq(parts) => parts.get(1).is_none_or(descr_may_hold_objects),
            _ => true,
        }),
        _ => true,
    }
}

fn plain_dtype(s: &str) -> bool {
    let t = s.trim_start_matches(['<', '>', '|', '=']);
    let kind_end = t
        .find(|c: char| !c.is_ascii_alphabetic() && c != '?')
        .unwrap_or(t.len());
    let (kind, rest) = t.split_at(kind_end);
    let rest_ok = |r: &str| {
        let (digits, unit) = r.split_at(r.find('[').unwrap_or(r.len()));
        digits.chars().all(|c| c.is_ascii_digit())
            && (unit.is_empty()
                || (unit.starts_with('[')
                    && unit.ends_with(']')
                    && unit[1..unit.len() - 1]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric())))
    };
    match kind {
        "b" | "i" | "u" | "f" | "c" | "S" | "a" | "U" | "V" | "M" | "m" | "?" => rest_ok(rest),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_headers() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (100, 50), }";
        assert!(!descr_may_hold_objects(
            parse(h).unwrap().dict_get("descr").unwrap()
        ));
        for obj in [
            "'|O'",
            "'object'",
            "'\\x7cO'",
            "'O8'",
            "[('a', '<f8'), ('b', '|O')]",
        ] {
            let h = format!("{{'descr': {obj}, 'fortran_order': False, 'shape': (3,), }}");
            assert!(
                descr_may_hold_objects(parse(&h).unwrap().dict_get("descr").unwrap()),
                "{obj}"
            );
        }
        assert!(!descr_may_hold_objects(&Lit::Str("<M8[ns]".into())));
        assert!(parse("{'descr': '<f4'").is_none());
    }
}

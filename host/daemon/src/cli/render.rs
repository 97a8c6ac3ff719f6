//! What the CLI's commands print: aligned tables, JSON answers, and JSON values as table cells.

use serde::Serialize;
use serde_json::Value;

/// Prints `rows` (the header first) as columns; see [`table`].
pub(super) fn print_table<R: AsRef<[String]>>(rows: &[R]) {
    print!("{}", table(rows));
}

/// `rows` as lines of columns two spaces apart, each as wide as its widest cell. Widths count
/// chars, not bytes, since cells hold `→`, `×` and the like; rows may differ in length (a
/// table whose columns are known only at run time), and each line's trailing padding is cut.
pub(super) fn table<R: AsRef<[String]>>(rows: &[R]) -> String {
    let columns = rows.iter().map(|row| row.as_ref().len()).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The API's answer (or a command's own report) as pretty JSON, for `--json`.
pub(super) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A JSON value as table text: strings bare, null (or absent) as `-`.
pub(super) fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// [`text`] of the value at a JSON pointer.
pub(super) fn text_at(value: &Value, pointer: &str) -> String {
    value.pointer(pointer).map_or_else(|| "-".into(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_by_chars_and_trims_trailing_space() {
        let rows = [
            ["NAME", "ALIASES", "TAGS"].map(String::from),
            ["m", "prod→v3", "-"].map(String::from),
            ["longer-name", "-", ""].map(String::from),
        ];
        assert_eq!(
            table(&rows),
            "NAME         ALIASES  TAGS\n\
             m            prod→v3  -\n\
             longer-name  -\n"
        );
        let ragged = vec![
            vec!["RANK".to_string(), "SCORE".into(), "SHARPE".into()],
            vec!["1".to_string(), "0.5".into()],
        ];
        assert_eq!(table(&ragged), "RANK  SCORE  SHARPE\n1     0.5\n");
        assert_eq!(table::<Vec<String>>(&[]), "");
    }

    #[test]
    fn cells_show_strings_bare_and_null_as_a_dash() {
        let value = serde_json::json!({"s": "x", "n": 3, "z": null});
        assert_eq!(text_at(&value, "/s"), "x");
        assert_eq!(text_at(&value, "/n"), "3");
        assert_eq!(text_at(&value, "/z"), "-");
        assert_eq!(text_at(&value, "/missing"), "-");
    }
}

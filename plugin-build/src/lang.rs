//! A plugin project's language, told by its entry file.

use std::fmt;
use std::path::Path;

/// The languages `evolve plugin build` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// A cargo crate (`Cargo.toml`) using `evolve-plugin-sdk`, built for `wasm32-wasip2`.
    Rust,
    /// `app.py`, componentized with componentize-py.
    Python,
    /// `app.js` (an ES module), componentized with componentize-js.
    JavaScript,
}

/// Entry file of a Python plugin.
pub const PYTHON_ENTRY: &str = "app.py";
/// Entry file of a JavaScript plugin.
pub const JS_ENTRY: &str = "app.js";

impl Language {
    /// The language of the project in `dir`: `Cargo.toml` → Rust, `app.py` → Python, `app.js` →
    /// JavaScript. `None` when none (or more than one) of them is present.
    pub fn detect(dir: &Path) -> Option<Language> {
        let found: Vec<Language> = [
            ("Cargo.toml", Language::Rust),
            (PYTHON_ENTRY, Language::Python),
            (JS_ENTRY, Language::JavaScript),
        ]
        .into_iter()
        .filter(|(file, _)| dir.join(file).is_file())
        .map(|(_, lang)| lang)
        .collect();
        match found.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// The name users type: `rust`, `python`, `js`.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::JavaScript => "js",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_entry_file_and_refuses_ambiguity() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Language::detect(dir.path()), None);
        std::fs::write(dir.path().join("app.py"), "").unwrap();
        assert_eq!(Language::detect(dir.path()), Some(Language::Python));
        std::fs::write(dir.path().join("app.js"), "").unwrap();
        assert_eq!(Language::detect(dir.path()), None);
        std::fs::remove_file(dir.path().join("app.py")).unwrap();
        assert_eq!(Language::detect(dir.path()), Some(Language::JavaScript));
    }
}

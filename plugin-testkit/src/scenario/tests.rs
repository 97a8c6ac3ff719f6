#![allow(clippy::unwrap_used)]
use super::*;

fn parse(text: &str) -> Result<ScenarioFile, ScenarioError> {
    ScenarioFile::parse(Path::new("tests/x.toml"), text)
}

#[test]
fn a_file_parses_with_defaults_merged_into_cases() {
    let file = parse(
        r#"
        config = { greeting = "hello", other = 1 }
        http."a.test:80" = { status = 200 }

        [[case]]
        name = "one"
        config = { greeting = "hi" }
        http."b.test:8080" = { fail = "timeout" }
        check = { endpoint = "http://a.test" }
        expect = { status = "healthy", http_requests = ["GET http://a.test/health"] }

        [[case]]
        name = "two"
        run = { task = "hello", input = { who = "evolve" } }
        expect = { summary = "hello, evolve", output = { greeting = "hello, evolve" } }
        "#,
    )
    .unwrap();
    assert_eq!(file.cases.len(), 2);
    let one = &file.cases[0];
    let config = one.setup.config.as_ref().unwrap();
    assert_eq!(config["greeting"].as_str(), Some("hi"));
    assert_eq!(config["other"].as_integer(), Some(1));
    let http = one.setup.http.as_ref().unwrap();
    assert_eq!(http.len(), 2, "{http:?}");
    match &file.cases[1].call {
        Call::Run { task, input } => {
            assert_eq!(task, "hello");
            assert_eq!(input, &serde_json::json!({"who": "evolve"}));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unknown_key_is_named_with_the_file() {
    let err = parse(
        r#"
        [[case]]
        name = "typo"
        run = { task = "hello" }
        expect = { sumary = "x" }
        "#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("tests/x.toml: "), "{err}");
    assert!(err.contains("sumary"), "{err}");
    assert!(err.contains("line 5"), "{err}");
}

#[test]
fn a_case_makes_exactly_one_call_with_fitting_expectations() {
    let err = parse("[[case]]\nname = \"none\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("case `none`") && err.contains("exactly one call"),
        "{err}"
    );
    let err = parse("[[case]]\nname = \"both\"\nhealth = true\nrun = { task = \"x\" }\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("exactly one call"), "{err}");
    let err = parse("[[case]]\nname = \"h\"\nhealth = true\nexpect = { summary = \"x\" }\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`expect.summary`") && err.contains("not to `health`"),
        "{err}"
    );
    let err = parse(
        "[[case]]\nname = \"r\"\nrun = {}\nexpect = { error = \"invalid-input\", summary = \"x\" }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`expect.summary`"), "{err}");
}

#[test]
fn bad_fake_hosts_and_empty_files_are_refused() {
    let err = parse(
        "[[case]]\nname = \"h\"\nhttp.\"nohost\" = { status = 200 }\ncheck = { endpoint = \"http://x\" }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("http.\"nohost\"") && err.contains("host:port"),
        "{err}"
    );
    let err = parse(
        "[[case]]\nname = \"h\"\nhttp.\"a.test:80\" = { status = 200, fail = \"timeout\" }\ncheck = { endpoint = \"http://x\" }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not both"), "{err}");
    let err = parse("config = {}\n").unwrap_err().to_string();
    assert!(err.contains("no `[[case]]`"), "{err}");
    let err = parse("[[case]]\nname = 3\n").unwrap_err().to_string();
    assert!(
        err.starts_with("tests/x.toml: ") && err.contains("name"),
        "{err}"
    );
}

#[test]
fn an_oversized_file_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    std::fs::write(&path, vec![b'#'; MAX_SCENARIO_BYTES as usize + 1]).unwrap();
    let err = ScenarioFile::read(&path).unwrap_err();
    assert!(matches!(err, ScenarioError::TooLarge { .. }), "{err}");
}
